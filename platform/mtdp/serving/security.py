"""Access control and request limits of the embedding service.

* **API keys**: with ``$MTDP_SERVE_API_KEYS`` set (comma-separated keys, read by each replica),
  every endpoint but ``/healthz`` requires ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``;
  keys are compared in constant time (:func:`hmac.compare_digest`, against every key); a
  missing or wrong key gets 401 in the service's error format. Unset: no authentication (a
  local or private-network deployment; put TLS and authentication at the ingress otherwise).
* **Body size**: a request body larger than ``max_body_bytes`` gets 413 before it is parsed —
  by its ``Content-Length``, or, for a chunked body, as soon as the bytes read pass the limit.
"""
from __future__ import annotations

import hmac
import json
import os

#: Environment variable holding the accepted API keys (comma-separated).
API_KEYS_ENV = "MTDP_SERVE_API_KEYS"
#: Paths served without a key (liveness probes must not need a secret).
OPEN_PATHS = ("/healthz",)


def api_keys() -> list[str]:
    """The accepted keys from :data:`API_KEYS_ENV` (empty: authentication off)."""
    return [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]


def key_ok(given: str | None, keys: list[str]) -> bool:
    """True when ``given`` equals one of ``keys``, compared in constant time."""
    if not given:
        return False
    ok = False
    for k in keys:  # every key is compared, so timing does not say which one matched
        ok |= hmac.compare_digest(given.encode(), k.encode())
    return ok


def presented_key(headers) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


def _error(status: int, error: str, detail: str, extra_headers: list | None = None):
    body = json.dumps({"error": error, "detail": detail, "record": None, "id": None}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra_headers or [])]
    return {"type": "http.response.start", "status": status, "headers": headers}, \
        {"type": "http.response.body", "body": body}


class GuardMiddleware:
    """ASGI middleware: API keys (when configured) and the body-size limit. The replica sets
    both once (:meth:`configure`) before it serves; until then nothing is let through."""

    keys: list[str] = []
    max_body: int = 0

    @classmethod
    def configure(cls, max_body_bytes: int) -> None:
        cls.keys, cls.max_body = api_keys(), max_body_bytes

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.keys and path not in OPEN_PATHS \
                and not key_ok(presented_key(headers), self.keys):
            for msg in _error(401, "unauthorized", "a valid API key is required: send "
                              "'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                              [(b"www-authenticate", b"Bearer")]):
                await send(msg)
            return
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            return await self._too_large(send, int(length))
        return await self.app(scope, self._limited(receive, send), send)

    async def _too_large(self, send, size: int | None) -> None:
        what = f"{size:,} bytes" if size else "more bytes"
        for msg in _error(413, "body_too_large", f"the request body has {what}; the limit is "
                          f"{self.max_body:,} (split the request)"):
            await send(msg)

    def _limited(self, receive, send):
        seen = 0
        max_body = self.max_body

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body:
                    raise BodyTooLarge(seen)
            return message
        return wrapped


class BodyTooLarge(Exception):
    """A streamed body passed the limit (handled as a 413 by the app)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size
