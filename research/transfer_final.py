#!/usr/bin/env python
"""The transfer recipe's final evaluation, written to docs/results/transfer-final.md:

    python research/transfer_final.py runs/unirep-cpu        # the recipe's work folder
    python research/transfer_final.py runs/unirep-nterm --student DIR --compare mtdp-unirep

1. ``tune/benchmark.py``'s run (the product evaluation) of UniRep-1900, the distilled student
   (``--student``: default WORKDIR/student/student), its untrained start point and amino-acid
   composition on every task (3,000 proteins each, 5 homology folds where the data have them,
   the MLP probe): per task the scores, the student/teacher ratio and the gain capture over
   composition ± SE, ridge R² to UniRep-1900; with ``--compare`` another student on the same
   folds and the paired difference of the two gain captures ± its own SE;
2. R² of UniRep-1900's h_avg by the student's own head (no refit) on the same proteins;
3. the student's speed against UniRep-1900 on the same proteins, in one process;
4. the recipe's stage timings and training figures.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mtdp_studies.final_report import TEACHER, compare_lines, head_r2, speed

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from mtdp.evaluate.config import BenchmarkConfig
    from mtdp.evaluate.runner import run_benchmark
    from mtdp.evaluate.tasks import load_task

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "transfer-final.md")
    p.add_argument("--speed-proteins", type=int, default=200)
    p.add_argument("--student", type=Path, help="student directory (default: the run's)")
    p.add_argument("--compare", help="another student's model spec, scored on the same folds")
    args = p.parse_args(argv)
    work = args.workdir.resolve()
    student, start = (args.student or work / "student" / "student").resolve(), work / "random-init"
    torch.set_num_threads(2)
    models = [TEACHER, f"student:{student}", *([args.compare] if args.compare else []),
              f"student:{start}", "aac"]
    cfg = BenchmarkConfig(models=models,
                          teacher=TEACHER, tasks=["all"], max_proteins=3000, folds=5,
                          output_dir=str(ROOT / "runs" / "bench-final"),
                          cache_dir=str(ROOT / "runs" / "embedding-store"))
    t0 = time.perf_counter()
    result = run_benchmark(cfg)
    bench_s = time.perf_counter() - t0
    loc = load_task("localization", max_proteins=3000, seed=42, min_class_count=5)
    own = head_r2(student, loc)
    rng = np.random.default_rng(0)
    sample = [loc.sequences[i] for i in rng.permutation(len(loc))[:args.speed_proteins]]
    rates = speed(student, sample)
    timings = json.loads((work / "timings.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Transfer: the CPU recipe's student against UniRep-1900", "",
             f"`python research/transfer_final.py {command}` · commit {commit} · "
             f"{time.strftime('%Y-%m-%d')} · {platform.node()} ({torch.get_num_threads()} "
             f"threads, {platform.processor() or platform.machine()})", "",
             Path(result.paths["summary_md"]).read_text().split("\nSecondary metrics")[0],
             "", f"R² of UniRep-1900's h_avg by the student's own head (no refit, "
             f"{len(loc)} localization proteins at full length): {own:.3f}.", "",
             f"Speed on {len(sample)} of those proteins (real lengths), one process, fp32: "
             f"student {rates['student']:.1f} proteins/s, UniRep-1900 {rates[TEACHER]:.2f} "
             f"proteins/s: {rates['student'] / rates[TEACHER]:.0f}×.", "",
             "Stage seconds (as first computed): " + ", ".join(
                 f"{k} {v:.0f}" for k, v in timings.items()) + f"; evaluation {bench_s:.0f}.",
             *(compare_lines(result) if args.compare else [])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
