"""Ray Train distillation with its train rows streamed from Ray Data every epoch against held
in the worker's memory (``train_memory_mb``), side by side on one labelled dataset.

    python benchmarks/train_ingest.py                      # the demo's labels (runs/demo)
    python benchmarks/train_ingest.py --memory-first        # the other order
    python benchmarks/train_ingest.py --data runs/unirep-cpu/labels-*/data --epochs 1

Both runs are the product's ``run_distill`` with the embedded default's training settings
(``jobs/configs/demo.yaml``), the same steps, no MLflow, into a temporary directory; printed
per run: wall seconds of the whole run (Ray Train start included, as a user waits for it),
training tokens/s as the worker measures them, and the ratio of the two. Run it on a quiet
machine: a second heavy job changes both figures.
"""
from __future__ import annotations

import argparse
import glob
import json
import tempfile
import time
from pathlib import Path

from mtdp.distill import DistillConfig, run_distill
from mtdp.distill.recipe import CONFIGS, load_recipe
from mtdp.runtime import apply_env_defaults, init_ray

ROOT = Path(__file__).resolve().parents[1]


def one_run(data: str, out: Path, memory_mb: int, args) -> dict:
    """One distillation of ``args.epochs`` epochs; its wall time and the worker's rate."""
    recipe = load_recipe(CONFIGS / "demo.yaml")
    cfg = DistillConfig(**{**recipe.distill, "data": data, "output": str(out),
                           "residue_teachers": recipe.per_residue, "epochs": args.epochs,
                           "mlflow": False, "register_as": "", "run_name": "ingest",
                           "train_memory_mb": memory_mb, "log_every": 10 ** 6})
    t0 = time.perf_counter()
    res = run_distill(cfg)
    wall = time.perf_counter() - t0
    return {"train_memory_mb": memory_mb, "rows": "memory" if memory_mb else "streamed",
            "steps": res.steps, "wall_seconds": round(wall, 1),
            "tokens_per_s": round(res.metrics.get("perf/tokens_per_s", 0.0))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "runs" / "demo" / "labels-*" / "data"),
                   help="a teacher dataset (a glob is expanded; default: the demo's labels)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    p.add_argument("--memory-first", action="store_true",
                   help="run the in-memory case first (default: streamed first); the second "
                        "run may find the files in the page cache")
    args = p.parse_args(argv)
    found = sorted(glob.glob(args.data))
    if not found:
        raise SystemExit(f"no teacher dataset at {args.data}: run `python jobs/distill.py` "
                         "(the demo labels its pool) or pass --data")
    apply_env_defaults()
    init_ray()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in ((4096, 0) if args.memory_first else (0, 4096)):
            rows.append(one_run(found[-1], Path(tmp) / str(mb), mb, args))
            print(json.dumps(rows[-1]), flush=True)
    streamed, memory = sorted(rows, key=lambda r: r["train_memory_mb"])
    print(f"\n{found[-1]}, {args.epochs} epochs, {memory['steps']} steps each:")
    print("| train rows | wall s | tokens/s |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['rows']} | {r['wall_seconds']} | {r['tokens_per_s']:,} |")
    print(f"memory / streamed: {memory['tokens_per_s'] / max(streamed['tokens_per_s'], 1):.2f}x "
          f"tokens/s, {streamed['wall_seconds'] / memory['wall_seconds']:.2f}x less wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
