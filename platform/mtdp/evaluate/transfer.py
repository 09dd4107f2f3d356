"""How much of a teacher a student carries, measured so that composition cannot flatter it.

* **gain capture** = (student − base) / (teacher − base) of a task's per-fold scores, ``base``
  being amino-acid composition: 0 = nothing beyond composition, 1 = all the teacher's gain.
  The ratio of the fold means, with a leave-one-fold-out jackknife standard error (folds are
  paired: every model is probed on the same ones).
* **R² to the teacher's embedding**: of the standardised teacher vectors, from a student's own
  head (no refit) or from a ridge map fitted on the student's embedding (cross-validated
  predictions, :func:`ridge_r2`; the teacher's own ceiling is the same protocol on itself).
"""
from __future__ import annotations

import numpy as np

#: Ridge protocol of :func:`ridge_r2` (alpha on standardised features, folds, seed).
RIDGE_ALPHA, RIDGE_FOLDS, RIDGE_SEED = 10.0, 5, 0


def _jackknife(est, k: int) -> tuple[float, float]:
    """``est`` on all ``k`` folds and its leave-one-fold-out jackknife standard error."""
    value = est(np.ones(k, dtype=bool))
    if k < 2:
        return value, float("nan")
    loo = np.array([est(np.arange(k) != i) for i in range(k)])
    return value, float(np.sqrt((k - 1) / k * ((loo - loo.mean()) ** 2).sum()))


def _paired(*scores) -> list[np.ndarray]:
    arrays = [np.asarray(x, dtype=np.float64) for x in scores]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise ValueError("per-fold scores must be 1-D and paired, got "
                         + ", ".join(str(a.shape) for a in arrays))
    return arrays


def gain_capture(student, teacher, base) -> tuple[float, float]:
    """``(gain capture, jackknife SE)`` from per-fold scores of the three models (same
    folds). NaN when the teacher does not beat the base on average."""
    s, t, b = _paired(student, teacher, base)

    def est(m: np.ndarray) -> float:
        gap = (t[m] - b[m]).mean()
        return float((s[m] - b[m]).mean() / gap) if gap > 0 else float("nan")

    return _jackknife(est, len(s))


def gain_capture_difference(a, b, teacher, base) -> tuple[float, float]:
    """``(GC(a) − GC(b), jackknife SE)``: two students compared on the same folds, the SE of
    the difference itself (their fold-to-fold noise is shared, so it is smaller than either
    GC's SE)."""
    x, y, t, c = _paired(a, b, teacher, base)

    def est(m: np.ndarray) -> float:
        gap = (t[m] - c[m]).mean()
        return float((x[m] - y[m]).mean() / gap) if gap > 0 else float("nan")

    return _jackknife(est, len(x))


def ratio(student, teacher) -> float:
    """Student / teacher of the fold means (1.0 = as good as the teacher)."""
    t = float(np.mean(teacher))
    return float(np.mean(student)) / t if t else float("nan")


def standardised(y: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """``y`` standardised per feature with the mean / std of ``ref`` (default ``y``)."""
    ref = y if ref is None else ref
    return (y - ref.mean(0)) / ref.std(0).clip(1e-6)


def r2(target: np.ndarray, pred: np.ndarray) -> float:
    """``1 − SSE / SST`` over every feature of ``target`` ``[N, d]`` (its own mean): with
    standardised targets the mean of the features' R²."""
    target, pred = np.asarray(target, np.float64), np.asarray(pred, np.float64)
    sst = ((target - target.mean(0)) ** 2).sum()
    return float(1.0 - ((target - pred) ** 2).sum() / sst) if sst > 0 else float("nan")


def ridge_r2(x: np.ndarray, teacher: np.ndarray) -> float:
    """R² of the standardised ``teacher`` vectors from cross-validated ridge predictions on
    the standardised ``x`` (:data:`RIDGE_ALPHA`, :data:`RIDGE_FOLDS` folds)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_predict

    y = standardised(np.asarray(teacher, np.float64))
    pred = cross_val_predict(Ridge(alpha=RIDGE_ALPHA), standardised(np.asarray(x, np.float64)),
                             y, cv=KFold(RIDGE_FOLDS, shuffle=True, random_state=RIDGE_SEED))
    return r2(y, pred)


def fold_scores(trials, model: str, task) -> np.ndarray:
    """The primary metric per fold (fold order) of one model's selected trials on ``task``."""
    sub = trials[(trials.model == model) & (trials.task == task.name) & trials.selected]
    return sub.sort_values("fold")[f"test_{task.primary_metric}"].astype(float).to_numpy()


def transfer_section(trials, tasks, models, arrays: dict[str, np.ndarray], teacher: str,
                     base: str = "aac", min_r2_proteins: int = 2000) -> list[str]:
    """The report's transfer lines: per model and task the ratio to ``teacher`` and the gain
    capture over ``base`` (± jackknife SE over the paired folds); then R² of the teacher's
    embedding by ridge from each model, on the first task with ``min_r2_proteins``."""
    names = [m.name for m in models]
    if teacher not in names or base not in names:
        return []
    lines = ["", f"Transfer from **{teacher}** (per task: student / teacher ratio of the fold "
             f"means, and gain capture = (model − {base}) / (teacher − {base}) ± jackknife SE "
             "over the paired folds; 1 = all of the teacher's gain over composition):", "",
             "| model | " + " | ".join(t.name for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    for m in names:
        if m in (teacher, base):
            continue
        cells = []
        for t in tasks:
            s, te, b = (fold_scores(trials, x, t) for x in (m, teacher, base))
            if not len(s) or not (len(s) == len(te) == len(b)):
                cells.append("—")
                continue
            gc, se = gain_capture(s, te, b)
            cells.append(f"{ratio(s, te):.3f} · GC {gc:.2f} ± {se:.2f}" if np.isfinite(gc)
                         else f"{ratio(s, te):.3f} · GC n/a (teacher ≤ {base})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    big = [t for t in tasks if len(t) >= min_r2_proteins]
    if big:
        t = big[0]
        y = arrays[f"{teacher}||{t.name}"]
        lines += ["", f"R² of {teacher}'s embedding from each model's (ridge α {RIDGE_ALPHA:g}, "
                  f"{RIDGE_FOLDS}-fold cross-validated predictions, standardised features, "
                  f"{len(t)} {t.name} proteins; the teacher's own row is the protocol's "
                  "ceiling):", "", "| model | R² |", "|---|---:|"]
        lines += [f"| {m} | {ridge_r2(arrays[f'{m}||{t.name}'], y):.3f} |" for m in names
                  if f"{m}||{t.name}" in arrays]
    return lines


def r2_of_predictions(teacher: np.ndarray, pred: np.ndarray) -> float:
    """:func:`r2` of predicted teacher vectors (teacher units) against the true ones, both
    standardised with the true vectors' per-feature mean / std (the mean of the features'
    R²)."""
    teacher = np.asarray(teacher, np.float64)
    mu, sd = teacher.mean(0), teacher.std(0).clip(1e-6)
    return r2((teacher - mu) / sd, (np.asarray(pred, np.float64) - mu) / sd)
