"""Downstream benchmark on Ray Tune: every model × task × fold probed side by side.

    python tune/benchmark.py            # newest registered student + aac + kmer2, every task
    python tune/benchmark.py --tasks go --models aac,kmer2 --split random   # the paper's folds
    python tune/benchmark.py --models student:runs/student,esm2_t33_650M_UR50D,aac --tasks all
    python tune/benchmark.py --models kmer2,tiny-random-esm2 --max-proteins 500 --folds 5

Writes OUTPUT_DIR/summary.md, summary.csv, trials.csv, tasks.json, benchmark.png and logs an
MLflow parent run with one nested run per trial (MLFLOW_TRACKING_URI, default ./mlflow.db).
"""
from __future__ import annotations

import argparse
import sys
import time

EPILOG = """\
models: student directories (student:PATH), MLflow URIs (models:/NAME/VERSION), teacher names
  (esm2_t33_650M_UR50D, prot_t5_xl_uniref50, tiny-random-esm2 ...), local checkpoints, and the
  no-weight baselines aac, kmer1, kmer2, kmer3, random-student[:paper|small|tiny].
tasks: membrane, localization, go (GO molecular function, the local Swiss-Prot 2014 set),
  meltome, esol, deepsol, or all; go_pdb, go_pdb_bp, go_pdb_cc (DeepFRI nrPDB-GO, canonical,
  where present); data is read from --data-dir / $MTDP_DATA_DIR; a task whose files are absent
  is skipped with a message saying where to get them.
splits: homology (default) folds follow the data's homology partitions (DeepLoc 2.0: 5, GO:
  10; no sequence cluster on both sides), random 10-fold for tasks without them (the report
  says which); random: seeded random folds everywhere, as in the paper (flatters every model).
protocols: inner-val (default) stops early on a validation split of the training folds;
  paper picks the best epoch on the test fold, as the reference code did (OPTIMISTIC).
Options may also come from a YAML file (--config); flags given on the command line win.
"""


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one flag per :class:`mtdp.evaluate.runner.BenchmarkConfig` field."""
    from mtdp.evaluate.config import BenchmarkConfig
    from mtdp.config import add_dataclass_arguments

    p = argparse.ArgumentParser(
        prog="tune/benchmark.py", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file with any of the options below")
    p.add_argument("--list-tasks", action="store_true",
                   help="print the tasks, their sources and whether their data is present, then "
                        "exit")
    add_dataclass_arguments(p, BenchmarkConfig)
    return p


def list_tasks(data_dir: str | None) -> None:
    from mtdp.evaluate.tasks import TASKS, available_tasks
    from mtdp.io import data_dir as default_data_dir

    d = data_dir or str(default_data_dir())
    present = set(available_tasks(d, TASKS))
    for name, spec in TASKS.items():
        state = "present" if name in present else "absent"
        print(f"{name:13s} {spec.kind:11s} {state:8s} {spec.description}\n"
              f"{'':13s} source: {spec.source.url}\n{'':13s} cite: {spec.source.citation}; "
              f"licence: {spec.source.licence}")


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    args = build_parser().parse_args(argv)
    from mtdp.evaluate.config import BenchmarkConfig
    from mtdp.evaluate.runner import run_benchmark
    from mtdp.config import load_config

    try:
        cfg = load_config(BenchmarkConfig, args.config, args)
        if args.list_tasks:
            list_tasks(cfg.data_dir)
            return 0
        cfg.validate()
    except ValueError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = run_benchmark(cfg)
    print(open(result.paths["summary_md"]).read())
    print(f"benchmark finished in {time.perf_counter() - t0:.1f} s "
          f"({len(result.trials)} trials); outputs in {cfg.output_dir}; MLflow run "
          f"{result.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
