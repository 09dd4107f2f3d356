"""The probe that closes a distillation run: proteins the student never saw (DeepLoc 2.0
partition 4), embedded by the distilled student, the same student untrained (its exact start
point), a teacher and amino-acid composition; 5-fold logistic-regression accuracy of
localization and membrane, and how much of the teacher's gain over composition the student
captures (:mod:`.transfer`). Quick and linear: the full evaluation is ``tune/benchmark.py``."""
from __future__ import annotations

from typing import Any

import numpy as np

from .pools import sample_proteins
from .sources import single_location
from .transfer import gain_capture

FOLDS = 5


def fold_scores(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> list[float]:
    """Per-fold accuracy of a standardised L2 logistic regression (C = 0.1), stratified
    :data:`FOLDS`-fold CV."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    return [float(v) for v in cross_val_score(model, x, labels, cv=cv)]


def probe_labels(n: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """``n`` partition-4 proteins (seed 0) and their labels. Localization as the benchmark's
    task defines it (one location: proteins in several are left out of that task), and
    without classes of fewer than :data:`FOLDS` members (stratified folds need one each)."""
    df = sample_proteins(n, seed=0)
    loc = np.asarray([lab if single_location(lab) else "" for lab in df.label.astype(str)])
    names, counts = np.unique(loc[loc != ""], return_counts=True)
    loc = np.where(np.isin(loc, names[counts >= FOLDS]), loc, "")
    return list(df.sequence), {"localization": loc,
                               "membrane": np.asarray(df.membrane.astype(float).astype(int))}


def closing_probe(embedders: dict[str, Any], n: int, max_len: int,
                  student: str = "distilled", teacher: str | None = None,
                  base: str = "aac", store: Any = None,
                  stored: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Per model and task the mean accuracy and per-fold scores; with ``teacher`` and
    ``base`` named, each other model's gain capture (± SE) per task. The models named in
    ``stored`` are read through the embedding store ``store`` (a rerun embeds nothing)."""
    from ..embed import embed_cached, model_table
    from ..sequences import prepare

    seqs, labels = probe_labels(n)
    seqs = [prepare(s, max_len=max_len) for s in seqs]
    out: dict[str, dict[str, Any]] = {}
    for name, emb in embedders.items():
        table = model_table(store, emb, max_len=max_len) if name in stored and store else None
        x = embed_cached(emb, seqs, table, max_len=max_len)
        out[name] = {}
        for task, y in labels.items():
            keep = y != "" if y.dtype.kind == "U" else np.ones(len(y), dtype=bool)
            folds = fold_scores(x[keep], y[keep])
            out[name][task] = {"accuracy": float(np.mean(folds)), "folds": folds}
    if teacher and base in out and teacher in out:
        for name, row in out.items():
            for task, r in row.items():
                if name in (teacher, base):
                    continue
                r["gain_capture"] = gain_capture(r["folds"], out[teacher][task]["folds"],
                                                 out[base][task]["folds"])
    return out


def format_probe(scores: dict[str, dict[str, Any]], n: int) -> str:
    """The table the run prints."""
    tasks = list(next(iter(scores.values())))
    lines = [f"[probe] {n} proteins the student never saw (DeepLoc 2.0 partition 4), "
             f"logistic regression, {FOLDS}-fold CV accuracy (gain capture: share of the "
             "teacher's gain over amino-acid composition, ± SE over folds):",
             f"[probe]   {'':<22} " + "  ".join(f"{t:>24}" for t in tasks)]
    for name, row in scores.items():
        cells = []
        for t in tasks:
            r = row[t]
            gc = r.get("gain_capture")
            extra = f" (GC {gc[0]:+.2f} ± {gc[1]:.2f})" if gc and np.isfinite(gc[0]) else ""
            cells.append(f"{r['accuracy']:.3f}{extra}".rjust(24))
        lines.append(f"[probe]   {name:<22} " + "  ".join(cells))
    return "\n".join(lines)


def main_teacher(cfg) -> str:
    """A recipe's main teacher: its first per-residue one, else its first."""
    return (cfg.per_residue or cfg.teachers)[0]


def probe_recipe(cfg, result) -> dict[str, dict[str, Any]]:
    """The closing probe of a recipe run (:mod:`mtdp.distill.recipe`): the distilled student,
    its untrained start point, the recipe's :func:`main_teacher` and composition, at the
    student's length limit; the teacher's vectors are kept in the recipe's store."""
    from ..distill.batches import TeacherStats
    from ..distill.core import build_student
    from ..distill.recipe import distill_config, labels_dir, store_uri
    from ..models.registry import load_embedder
    from ..models.student import StudentEmbedder, load_student
    from ..store import EmbeddingStore
    from ..teacher_data import Manifest

    dcfg = distill_config(cfg, str(labels_dir(cfg) / "data"))
    student = load_student(result.student_dir)
    stats = TeacherStats.from_manifest(Manifest.load(dcfg.data), dcfg.teachers or None,
                                       dcfg.residue_teachers)
    untrained = build_student(dcfg, stats, Manifest.load(dcfg.data).max_len).eval()
    teacher = main_teacher(cfg)
    embedders = {"distilled": StudentEmbedder(student), "untrained": StudentEmbedder(untrained),
                 f"teacher {teacher}": load_embedder(teacher, device="cpu"),
                 "aac": load_embedder("aac")}
    return closing_probe(embedders, cfg.probe_proteins, student.config.max_len,
                         teacher=f"teacher {teacher}", store=EmbeddingStore(store_uri(cfg)),
                         stored=(f"teacher {teacher}", "aac"))


def recipe_head_r2(cfg, result) -> tuple[str, float, int]:
    """``(teacher, R², proteins)``: the recipe's main teacher's per-protein vector predicted
    by the distilled student's own head (no refit, teacher units; 0 = the mean vector) on the
    labelled pool's validation proteins, as they were labelled."""
    import torch

    from ..distill.recipe import labels_dir
    from ..embed import embed_sequences
    from ..models.student import StudentEmbedder, load_student
    from ..teacher_data import Manifest, read_teacher_table, teacher_matrix
    from .transfer import r2_of_predictions

    data = labels_dir(cfg) / "data"
    teacher = main_teacher(cfg)
    table = read_teacher_table(data, [teacher], split="validation")
    student = load_student(result.student_dir).eval()
    if table.num_rows < 2:
        return teacher, float("nan"), table.num_rows
    emb = embed_sequences(StudentEmbedder(student), table["sequence"].to_pylist())
    with torch.no_grad():
        pred = student.teacher_vectors(torch.from_numpy(emb)).get(teacher)
    if pred is None:  # a student saved without its heads' units
        return teacher, float("nan"), table.num_rows
    target = teacher_matrix(table, Manifest.load(data), teacher)
    return teacher, r2_of_predictions(target, pred.numpy()), table.num_rows
