"""The store's cost in a Serve request: no store, write-through (``store_flush_s=0``, each
batch commits before it answers) and write-behind (``store_flush_s=1``), side by side.

    MTDP_DATA_DIR=../shared/data python benchmarks/serve_store.py --requests 200 --concurrency 1

Serves a random student of ``--preset`` (tiny: the commits dominate; paper: the model does)
with a fresh store per run, A B C C B A, every request of 4 real proteins (DeepLoc 1.0 test set)
that no earlier request sent, so each one's rows are new. Prints a JSON line per run, then a
table: p50 / p99 latency, proteins/s, commits to the model's table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--per-request", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2, help="A B C, then C B A, ...")
    a = p.parse_args(argv)
    import torch

    from mtdp_bench.serve_perf import compare_store_flush, load_sequences
    from mtdp.io import data_dir
    from mtdp.models.student import StudentConfig, StudentModel

    pairs = load_sequences(data_dir() / "deeploc1" / "deeploc_test_set.fasta",
                           limit=a.requests * a.per_request + 4)
    with tempfile.TemporaryDirectory(prefix="mtdp-serve-store-") as tmp:
        torch.manual_seed(0)
        model = Path(tmp) / "student"
        StudentModel(StudentConfig.preset(a.preset)).save(model)
        rows = compare_store_flush(str(model), pairs, Path(tmp), rounds=a.rounds,
                                   requests=a.requests, concurrency=a.concurrency,
                                   per_request=a.per_request)
    for r in rows:
        print(json.dumps(r))
    print("| store_flush_s | round | p50 ms | p99 ms | proteins/s | commits | errors |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        setting = "no store" if r["flush_s"] is None else f"{r['flush_s']:g}"
        print(f"| {setting} | {r['round']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['proteins_per_s']} | {r['commits']} | {r['errors']} |")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
