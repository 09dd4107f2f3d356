"""Load on the embedding service: ``run_load`` (N requests, C at a time, answers checked;
``benchmarks/serve_load.py``) and the store's cost in a request, write-behind against
write-through side by side (``benchmarks/serve_store.py``).

:func:`compare_store_flush` serves one model with a fresh store per run, alternating the
settings (no store, then each ``store_flush_s``: A B C C B A ...) on one local Ray, and
sends every run the same requests, all of sequences the store does not hold (each request's new
rows are committed: at once with 0, by the write-behind thread otherwise). A warm-up request of
other sequences comes first. Reported per run: latency p50 / p99, proteins/s, and the commits
the model's table took (its Lance versions).
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def load_sequences(path: str | os.PathLike, limit: int = 2000,
                   max_len: int | None = None) -> list[tuple[str, str]]:
    """Up to ``limit`` ``(id, sequence)`` pairs from a FASTA, optionally cut to ``max_len``."""
    from mtdp.sequences import iter_fasta

    pairs = []
    for rec in iter_fasta(path):
        pairs.append((rec.id, rec.sequence[:max_len] if max_len else rec.sequence))
        if len(pairs) >= limit:
            break
    if not pairs:
        raise SystemExit(f"no sequences in {path}")
    return pairs


async def run_load(url: str, pairs: list[tuple[str, str]], *, requests: int = 200,
                   concurrency: int = 200, per_request: int = 4,
                   timeout_s: float = 120.0) -> dict[str, Any]:
    """Send ``requests`` POST /embed calls, ``concurrency`` in flight, and measure them:
    requests, errors (count), error_samples, seconds, requests_per_s, proteins_per_s, latency
    p50_ms, p99_ms, max_ms."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []

    def body(i: int) -> dict[str, Any]:
        start = (i * per_request) % len(pairs)
        chosen = [pairs[(start + k) % len(pairs)] for k in range(per_request)]
        # Ids unique within a request (the same protein may be cycled in twice).
        return {"sequences": [{"id": f"{sid}#{k}", "sequence": seq}
                              for k, (sid, seq) in enumerate(chosen)]}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        payload = body(i)
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{url.rstrip('/')}/embed", json=payload)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    errors.append(f"request {i}: HTTP {r.status_code} {r.text[:200]}")
                    return
                got = r.json()
                if len(got["embeddings"]) != per_request:
                    errors.append(f"request {i}: {len(got['embeddings'])} embeddings for "
                                  f"{per_request} sequences")
                    return
                latencies.append(dt)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                errors.append(f"request {i}: {type(exc).__name__}: {exc}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        seconds = time.perf_counter() - t0
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    ok = len(latencies)
    return {"requests": requests, "concurrency": concurrency, "per_request": per_request,
            "ok": ok, "errors": len(errors), "error_samples": errors[:5],
            "seconds": round(seconds, 3), "requests_per_s": round(ok / seconds, 2),
            "proteins_per_s": round(ok * per_request / seconds, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _table_versions(store_dir: Path) -> int:
    """Versions of the store's one model table (a commit each)."""
    from mtdp.store import EmbeddingStore

    store = EmbeddingStore(store_dir, create=False)
    (model,) = store.models()
    return store.db.open_table(f"emb_{model['model_key']}").version


def compare_store_flush(model: str, pairs: list[tuple[str, str]], workdir: Path, *,
                        settings: Sequence[float | None] = (None, 0.0, 1.0), rounds: int = 2,
                        requests: int = 200, concurrency: int = 1,
                        per_request: int = 4) -> list[dict[str, Any]]:
    """One row per run (see the module): ``flush_s`` (None: no store, the baseline),
    ``round`` and :func:`run_load`'s figures, plus ``commits``. ``pairs`` must hold
    ``requests * per_request + 4`` sequences (the last 4 for the warm-up), so no run's
    request repeats another's sequences."""
    from ray import serve

    from mtdp.runtime import init_ray
    from mtdp.serving import build_app

    need = requests * per_request + 4
    if len(pairs) < need:
        raise ValueError(f"{len(pairs)} sequences; {need} needed (requests x per_request + 4)")
    init_ray()
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url, rows = f"http://127.0.0.1:{port}", []
    try:
        for r in range(rounds):
            for flush in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
                store = Path(workdir) / f"store-{r}-{flush}"
                args = {"model": model, "device": "cpu"}
                if flush is not None:
                    args.update(store=str(store), store_flush_s=str(flush))
                serve.run(build_app(args), name="mtdp", route_prefix="/")
                asyncio.run(run_load(url, pairs[-4:], requests=1, concurrency=1,
                                     per_request=4))  # warm-up
                res = asyncio.run(run_load(url, pairs[:-4], requests=requests,
                                           concurrency=concurrency, per_request=per_request))
                serve.delete("mtdp")  # graceful: the write-behind commits what waits
                res.update(flush_s=flush, round=r, commits=None if flush is None
                           else _table_versions(store) - 1)
                rows.append(res)
    finally:
        serve.shutdown()
    return rows
