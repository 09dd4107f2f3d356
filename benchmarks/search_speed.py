"""Search speed over the embedding store: generated vectors (a Gaussian mixture) in a real
store table, the real index (LanceDB IVF-PQ) and query path, recall@k against exact search.

    python benchmarks/search_speed.py                    # 1 M × 128-d, cosine
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

    d = SearchSpeedConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=d.rows)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--queries", type=int, default=d.queries)
    p.add_argument("--metric", choices=["cosine", "euclidean"], default=d.metric)
    p.add_argument("--kinds", default=",".join(d.kinds))
    p.add_argument("--probes", default=",".join(map(str, d.probes)))
    p.add_argument("--refine", default=",".join(map(str, d.refine)))
    p.add_argument("--partitions", default=",".join(map(str, d.partitions)),
                   help="IVF partitions to try (0: the default, about sqrt(rows))")
    p.add_argument("--store", default=None, help="keep the store here (default: a temp dir)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.rows < 256 or a.dim < 1 or a.queries < 10:
        print("search_speed: error: --rows ≥ 256, --dim ≥ 1, --queries ≥ 10", file=sys.stderr)
        return 2
    cfg = SearchSpeedConfig(rows=a.rows, dim=a.dim, queries=a.queries, metric=a.metric,
                            kinds=tuple(a.kinds.split(",")),
                            probes=tuple(int(x) for x in a.probes.split(",")),
                            refine=tuple(int(x) for x in a.refine.split(",")),
                            partitions=tuple(int(x) for x in a.partitions.split(",")),
                            store=a.store)
    out = run_search_speed(cfg)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
