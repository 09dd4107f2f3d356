"""Benchmark metrics, in plain numpy (no scikit-learn in the trial hot path; the tests check
each one against scikit-learn / scipy where they have it, and Fmax against hand computation).

* binary: macro F1 and balanced accuracy;
* multiclass: support-weighted F1 and accuracy;
* multilabel (GO): protein-centric Fmax (CAFA), its threshold and coverage, micro and macro
  AUPR;
* regression: Pearson and Spearman correlation.

:func:`compute_metrics` takes the probe's raw outputs (logits, or predictions for regression)
and returns all metrics of the task kind.
"""
from __future__ import annotations

import numpy as np

from ..fmax import FMAX_THRESHOLDS, fmax  # noqa: F401  (the benchmark's GO metric)


def _check_same_length(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("metrics need at least one example")


def _per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """F1 and support per label (F1 = 0 where precision + recall = 0, as scikit-learn)."""
    f1 = np.zeros(len(labels))
    support = np.zeros(len(labels))
    for j, c in enumerate(labels):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        support[j] = tp + fn
        denom = 2 * tp + fp + fn
        f1[j] = 2 * tp / denom if denom else 0.0
    return f1, support


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_same_length(y_true, y_pred)
    f1, _ = _per_class_f1(y_true, y_pred, np.union1d(y_true, y_pred))
    return float(f1.mean())


def f1_weighted(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Per-class F1 averaged with weights = true class support."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_same_length(y_true, y_pred)
    f1, support = _per_class_f1(y_true, y_pred, np.union1d(y_true, y_pred))
    return float((f1 * support).sum() / support.sum())


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact matches."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_same_length(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_same_length(y_true, y_pred)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as the step sum Σ (R_n − R_{n−1}) P_n over
    distinct score thresholds (scikit-learn's ``average_precision_score``). NaN if no
    positive."""
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = y_true.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y_true[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    # One point per distinct score: the last index of each run of ties.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def macro_aupr(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean :func:`average_precision` over terms (columns) with at least one positive."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(f"macro AUPR needs two [N, terms] arrays, got {y_true.shape} and "
                         f"{scores.shape}")
    aps = [average_precision(y_true[:, j], scores[:, j]) for j in range(y_true.shape[1])
           if y_true[:, j].any()]
    return float(np.mean(aps)) if aps else float("nan")


def micro_aupr(y_true: np.ndarray, scores: np.ndarray) -> float:
    """:func:`average_precision` over every (protein, term) pair at once (term-pooled, as
    DeepFRI and CAFA's term-centric AUPR report it)."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(f"micro AUPR needs two [N, terms] arrays, got {y_true.shape} and "
                         f"{scores.shape}")
    return average_precision(y_true.reshape(-1), scores.reshape(-1))


def coverage(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """CAFA coverage at ``threshold``: the share of benchmark proteins (with a true term)
    that get at least one predicted term (score ≥ threshold)."""
    y_true = np.asarray(y_true, dtype=bool)
    annotated = y_true.any(axis=1)
    if not annotated.any():
        return float("nan")
    return float(np.mean((np.asarray(scores)[annotated] >= threshold).any(axis=1)))


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    sorted_x = x[order]
    # Average the ranks inside each run of equal values.
    bounds = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1, len(x)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a > 1:
            ranks[order[a:b]] = (a + 1 + b) / 2.0
    return ranks


def pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Pearson correlation; NaN if either side is constant."""
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    _check_same_length(a, b)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    _check_same_length(a, b)
    return pearson(_rank(a), _rank(b))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def compute_metrics(kind: str, y_true: np.ndarray, output: np.ndarray,
                    scores: bool = False) -> dict[str, float]:
    """All metrics of a task kind from the probe's raw ``output``.

    ``output``: logits ``[N, C]`` (binary / multiclass: C classes; multilabel: C terms) or
    predictions ``[N]`` (regression); ``scores=True``: multi-label outputs are already scores
    in [0, 1] (annotation transfer), not logits.
    """
    output = np.asarray(output)
    if kind in ("binary", "multiclass"):
        pred = output.argmax(axis=1)
        if kind == "binary":
            return {"f1_macro": f1_macro(y_true, pred),
                    "balanced_accuracy": balanced_accuracy(y_true, pred),
                    "accuracy": accuracy(y_true, pred)}
        return {"accuracy": accuracy(y_true, pred), "f1_weighted": f1_weighted(y_true, pred),
                "f1_macro": f1_macro(y_true, pred)}
    if kind == "multilabel":
        probs = output if scores else _sigmoid(output)
        f, t = fmax(y_true, probs)
        return {"fmax": f, "fmax_threshold": t, "fmax_coverage": coverage(y_true, probs, t),
                "micro_aupr": micro_aupr(y_true, probs), "macro_aupr": macro_aupr(y_true, probs)}
    if kind == "regression":
        out = output.reshape(-1)
        return {"spearman": spearman(y_true, out), "pearson": pearson(y_true, out),
                "rmse": float(np.sqrt(np.mean((np.asarray(y_true) - out) ** 2)))}
    raise ValueError(f"unknown task kind {kind!r}")


#: For each kind, metrics where higher is better (early stopping / search selection use the
#: validation loss; these are for reports).
HIGHER_IS_BETTER = {"f1_macro", "balanced_accuracy", "accuracy", "f1_weighted", "fmax",
                    "fmax_coverage", "micro_aupr", "macro_aupr", "spearman", "pearson"}
