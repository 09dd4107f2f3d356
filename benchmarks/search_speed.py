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

import sys


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    from mtdp_bench.search_perf import SearchSpeedConfig, run_search_speed
    from mtdp.config import config_from_cli
    from mtdp.io import write_json

    cfg = config_from_cli(SearchSpeedConfig, __doc__, "search_speed", argv)
    if cfg is None:
        return 2
    out = run_search_speed(cfg)
    if cfg.json:
        write_json(cfg.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
