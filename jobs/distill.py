#!/usr/bin/env python
"""Distil a student from precomputed teacher embeddings on Ray Train (see mtdp.distill).

    python jobs/distill.py                            # embedded default: a small real demo
    python jobs/distill.py --config jobs/distill.yaml [--flag value ...]
    ray job submit --address http://127.0.0.1:8270 --working-dir . -- \\
        python jobs/distill.py --config jobs/distill.yaml

With no arguments it runs end to end on a few hundred DeepLoc 2.0 (partitions 0-3) Swiss-Prot
proteins from $MTDP_DATA_DIR (default ../shared/data beside the repository): precompute with
two tiny random teachers (only if that dataset is missing), distil the tiny student with the
RL selector, register it in MLflow as ``mtdp-student``. A few minutes on 2 CPUs.
With no cluster address (RAY_ADDRESS unset) a local Ray is started.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from mtdp.config import add_dataclass_arguments, load_config
from mtdp.distill import DistillConfig, run_distill

ROOT = Path(__file__).resolve().parents[1]
DEMO_PROTEINS = 400
DEMO_MAX_LEN = 256
DEMO_TEACHERS = ["tiny-random-esm2", "tiny-random-t5"]


def demo_dataset(workdir: Path) -> str:
    """The default run's teacher dataset: precomputed once into WORKDIR/teachers."""
    from mtdp.precompute import PrecomputeConfig, run_precompute
    from mtdp.sequences import write_fasta
    from mtdp.teacher_data import MANIFEST_FILE

    out = workdir / "teachers"
    if (out / MANIFEST_FILE).is_file():
        return str(out)
    data_dir = Path(os.environ.get("MTDP_DATA_DIR") or ROOT.parent / "shared" / "data")
    src = data_dir / "deeploc2" / "swissprot_train_val_5partitions.csv"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: set MTDP_DATA_DIR to the data folder "
                                "(see its README), or pass --data with your own dataset")
    pairs = []
    with open(src, newline="") as fh:
        for row in csv.DictReader(fh):
            if int(row["partition"]) < 4:  # partition 4 stays unseen (benchmark folds)
                pairs.append((row["accession"], row["sequence"]))
                if len(pairs) == DEMO_PROTEINS:
                    break
    workdir.mkdir(parents=True, exist_ok=True)
    fasta = workdir / "deeploc2_sample.fasta"
    write_fasta(pairs, fasta)
    print(f"precomputing {len(pairs)} proteins with {DEMO_TEACHERS} -> {out}", flush=True)
    run_precompute(PrecomputeConfig(inputs=[str(fasta)], teachers=DEMO_TEACHERS,
                                    output=str(out), max_len=DEMO_MAX_LEN,
                                    validation_fraction=0.1))
    return str(out)


def demo_config(workdir: Path) -> DistillConfig:
    """The embedded default: tiny student, 2 epochs, RL selector, one CPU worker."""
    return DistillConfig(data=demo_dataset(workdir), output=str(workdir), preset="tiny",
                         epochs=2, batch_size=16, eval_every=0, log_every=5,
                         selector="rl", selector_warmup_steps=10, num_workers=1,
                         lr=1e-3)


def build_config(argv: list[str]) -> DistillConfig:
    """The run's config from command-line arguments (no arguments: the embedded default,
    which precomputes its teacher dataset if needed)."""
    argv = list(argv)
    # `--resume` alone means `--resume true` (the config flag itself takes a value).
    for i, a in enumerate(argv):
        if a == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv.insert(i + 1, "true")
            break
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of DistillConfig fields (flags override it)")
    add_dataclass_arguments(p, DistillConfig)
    args = p.parse_args(argv)
    if not argv:
        return demo_config(Path("runs/demo").resolve())
    return load_config(DistillConfig, args.config, args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MTDP_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    try:
        cfg = build_config(sys.argv[1:] if argv is None else argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    import ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        # address="local": a new local Ray, never someone else's cluster found on this host.
        ray.init(address="local", include_dashboard=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1",
                                           "MTDP_DATA_DIR": os.environ["MTDP_DATA_DIR"]}})
    try:
        result = run_distill(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    summary = {"run_name": result.run_name, "steps": result.steps,
               "student": result.student_dir, "model_uri": result.model_uri,
               "mlflow_run_id": result.mlflow_run_id,
               **{k: round(v, 4) for k, v in result.metrics.items()
                  if k.startswith(("eval/", "selector/rate")) and isinstance(v, float)}}
    print(json.dumps(summary, indent=2))
    if result.model_uri:
        print(f"embed with: mtdp embed proteins.fasta -o emb.parquet --model {result.model_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
