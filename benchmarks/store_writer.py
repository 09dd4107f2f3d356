"""The store writer's commit cost and memory as its table grows (no model, no Ray): the
pass's commit path on generated rows, each setting in a fresh process, side by side.

    python benchmarks/store_writer.py                        # 1 M rows, both settings
    python benchmarks/store_writer.py --rows 200000 --settings merge

Prints, per setting, rows written, rows inserted, private memory (USS) and milliseconds per
commit at ten points of the fill; --json FILE writes every figure.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    from mtdp.benchmarks.store_writer_perf import StoreWriterConfig, run_store_writer
    from mtdp.config import add_dataclass_arguments, load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataclass_arguments(p, StoreWriterConfig)
    p.add_argument("--json", default=None, help="write every figure to this file")
    a = p.parse_args(argv)
    try:
        cfg = load_config(StoreWriterConfig, None, a)
        out = run_store_writer(cfg)
    except ValueError as exc:
        print(f"store_writer: error: {exc}", file=sys.stderr)
        return 2
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
