"""The store writer's commit cost and memory as its table grows (no model, no Ray): the
pass's commit path on generated rows, each setting in a fresh process, side by side.

    python benchmarks/store_writer.py                   # 1 M rows: every setting
    python benchmarks/store_writer.py --rows 200000 --settings append,merge
    python benchmarks/store_writer.py --commit-rows 256 --settings append,append-uncompacted

Prints, per setting, rows written, rows inserted, rows stored, commits merged, private memory
(USS), milliseconds per commit, the table's fragments and the manifests Lance keeps, at ten
points of the fill; --json FILE writes every figure.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    from mtdp_bench.store_writer_perf import StoreWriterConfig, run_store_writer
    from mtdp.config import config_from_cli
    from mtdp.io import write_json

    cfg = config_from_cli(StoreWriterConfig, __doc__, "store_writer", argv)
    if cfg is None:
        return 2
    out = run_store_writer(cfg)
    if cfg.json:
        write_json(cfg.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
