"""The pieces of ``research/transfer_final.py``'s report: R² by the student's own head, speed
against the teacher on the same proteins, and two students compared on the same folds."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
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


def compare_lines(result) -> list[str]:
    """The two students' gain captures on the same folds, and their paired difference."""
    from mtdp.evaluate.transfer import fold_scores, gain_capture_difference

    names = [m.name for m in result.models]
    a, b = names[1], names[2]
    out = ["", f"Paired: **{a}** − **{b}**, gain capture difference ± jackknife SE over the "
           "same folds (the shared fold noise cancels):", "", "| task | difference |",
           "|---|---:|"]
    for t in result.tasks:
        d, se = gain_capture_difference(*(fold_scores(result.trials, m, t)
                                          for m in (a, b, TEACHER, "aac")))
        out.append(f"| {t.name} | {d:+.2f} ± {se:.2f} |" if np.isfinite(d)
                   else f"| {t.name} | n/a (teacher ≤ aac) |")
    return out
