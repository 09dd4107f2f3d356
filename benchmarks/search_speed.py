"""Search speed over the embedding store: generated vectors (a Gaussian mixture) in a real
store table, the real index (LanceDB IVF-HNSW-SQ / IVF-PQ) and query path, recall@k against
exact search.

    python benchmarks/search_speed.py                    # 1 M × 128-d, cosine, IVF-PQ
    python benchmarks/search_speed.py --kinds ivf_hnsw_sq,ivf_pq --probes 10,20,40 --refine 10,20
    python benchmarks/search_speed.py --rows 100000 --kinds ivf_pq,ivf_hnsw_sq

Prints the fill and index build times, then p50 / p99 latency (one query per call) and
recall@10 for each setting; --json FILE writes every figure.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    from mtdp.benchmarks.search_perf import SearchSpeedConfig, run_search_speed
    from mtdp.config import add_dataclass_arguments, load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataclass_arguments(p, SearchSpeedConfig)
    p.add_argument("--json", default=None, help="write every figure to this file")
    a = p.parse_args(argv)
    try:
        cfg = load_config(SearchSpeedConfig, None, a)
    except ValueError as exc:
        print(f"search_speed: error: {exc}", file=sys.stderr)
        return 2
    out = run_search_speed(cfg)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
