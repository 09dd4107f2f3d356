#!/usr/bin/env python
"""The transfer recipe's final evaluation, written to docs/results/transfer.md:

    python research/transfer_final.py runs/unirep-cpu        # the recipe's work folder

1. ``tune/benchmark.py``'s run (the product evaluation) of UniRep-1900, the distilled student,
   its untrained start point and amino-acid composition on every task (3,000 proteins each,
   5 homology folds where the data have them, the MLP probe): per task the scores, the
   student/teacher ratio and the gain capture over composition ± SE, ridge R² to UniRep-1900;
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

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "unirep1900"


def head_r2(student_dir: Path, task) -> float:
    """R² of the teacher's vectors by the student's own head, no refit."""
    from mtdp.evaluate.cache import cached_embeddings
    from mtdp.evaluate.transfer import r2_of_predictions
    from mtdp.embed import embed_sequences
    from mtdp.models.registry import load_embedder
    from mtdp.models.student import StudentEmbedder, load_student

    student = load_student(student_dir)
    x = embed_sequences(StudentEmbedder(student), task.sequences)
    y = cached_embeddings(load_embedder(TEACHER, device="cpu"), task,
                          ROOT / "runs" / "embedding-store")[0]
    with torch.no_grad():
        pred = student.teacher_vectors(torch.from_numpy(x))[TEACHER].numpy()
    return r2_of_predictions(y, pred)


def speed(student_dir: Path, seqs: list[str]) -> dict[str, float]:
    """Proteins/s of the student and UniRep-1900 on the same proteins, one after the other."""
    from mtdp.embed import embed_sequences
    from mtdp.models.registry import load_embedder

    out = {}
    for name, spec in (("student", f"student:{student_dir}"), (TEACHER, TEACHER)):
        emb = load_embedder(spec, device="cpu", precision="fp32")
        embed_sequences(emb, seqs[:4])
        t0 = time.perf_counter()
        embed_sequences(emb, seqs)
        out[name] = len(seqs) / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    from mtdp.evaluate.config import BenchmarkConfig
    from mtdp.evaluate.runner import run_benchmark
    from mtdp.evaluate.tasks import load_task

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "transfer-final.md")
    p.add_argument("--speed-proteins", type=int, default=200)
    args = p.parse_args(argv)
    work = args.workdir.resolve()
    student, start = work / "student" / "student", work / "random-init"
    torch.set_num_threads(2)
    cfg = BenchmarkConfig(models=[TEACHER, f"student:{student}", f"student:{start}", "aac"],
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
    lines = [f"# Transfer: the CPU recipe's student against UniRep-1900", "",
             f"`python research/transfer_final.py {args.workdir}` · commit {commit} · "
             f"{time.strftime('%Y-%m-%d')} · {platform.node()} ({torch.get_num_threads()} "
             f"threads, {platform.processor() or platform.machine()})", "",
             Path(result.paths["summary_md"]).read_text().split("\nSecondary metrics")[0],
             "", f"R² of UniRep-1900's h_avg by the student's own head (no refit, "
             f"{len(loc)} localization proteins at full length): {own:.3f}.", "",
             f"Speed on {len(sample)} of those proteins (real lengths), one process, fp32: "
             f"student {rates['student']:.1f} proteins/s, UniRep-1900 {rates[TEACHER]:.2f} "
             f"proteins/s: {rates['student'] / rates[TEACHER]:.0f}×.", "",
             "Stage seconds (as first computed): " + ", ".join(
                 f"{k} {v:.0f}" for k, v in timings.items()) + f"; evaluation {bench_s:.0f}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
