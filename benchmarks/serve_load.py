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
import sys

from mtdp_bench.serve_perf import load_sequences, run_load


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
