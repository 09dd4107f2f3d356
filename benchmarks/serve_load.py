"""Load test for the mtdp embedding service: N requests, C at a time, real proteins.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --requests 200 --concurrency 200

Each request posts ``--per-request`` real sequences (cycled from ``--fasta``, default the
DeepLoc 1.0 test set in ``$MTDP_DATA_DIR``) to ``POST /embed`` and checks the answer holds one
embedding per sequence. Prints throughput, p50/p99 latency and the error count (one JSON line
first, for scripts). Exit status 1 when any request failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

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


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    p.add_argument("--requests", type=int, default=200, help="requests to send")
    p.add_argument("--concurrency", type=int, default=200, help="requests in flight at once")
    p.add_argument("--per-request", type=int, default=4, help="sequences per request")
    p.add_argument("--fasta", default=None, help="sequences to send (default: DeepLoc 1.0 test)")
    p.add_argument("--max-len", type=int, default=None, help="cut sequences client-side")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    a = p.parse_args(argv)
    from mtdp.io import data_dir

    fasta = a.fasta or data_dir() / "deeploc1" / "deeploc_test_set.fasta"
    pairs = load_sequences(fasta, max_len=a.max_len)
    res = asyncio.run(run_load(a.url, pairs, requests=a.requests, concurrency=a.concurrency,
                               per_request=a.per_request, timeout_s=a.timeout))
    print(json.dumps(res))
    print("{ok}/{requests} ok, {errors} errors in {seconds} s: {requests_per_s} req/s, "
          "{proteins_per_s} proteins/s, latency p50 {p50_ms} ms, p99 {p99_ms} ms (concurrency "
          "{concurrency}, {per_request} sequences/request)".format(**res))
    for err in res["error_samples"]:
        print("  " + err, file=sys.stderr)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
