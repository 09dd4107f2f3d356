"""CAFA's protein-centric Fmax (Radivojac et al. 2013): the GO score of the benchmark
(:mod:`mtdp.evaluate.metrics`) and of a predictor's cross-validation (:mod:`mtdp.predictor`),
one definition for both."""
from __future__ import annotations

import numpy as np

#: CAFA evaluates Fmax on thresholds 0.01, 0.02, ..., 1.00 (not 0: a score of 0 is "not
#: predicted", which matters for annotation transfer, whose scores are exactly 0 off the
#: neighbours' terms).
FMAX_THRESHOLDS = np.round(np.linspace(0.01, 1.0, 100), 2)


def fmax(y_true: np.ndarray, scores: np.ndarray,
         thresholds: np.ndarray = FMAX_THRESHOLDS) -> tuple[float, float]:
    """Protein-centric Fmax (CAFA; Radivojac et al. 2013) and the threshold reaching it.

    At threshold t a protein's predicted terms are those with score ≥ t. Precision(t) is the
    mean, over proteins with at least one predicted term, of |pred ∩ true| / |pred|;
    recall(t) is the mean, over all proteins with at least one true term, of
    |pred ∩ true| / |true|. Fmax = max_t 2 P R / (P + R). Proteins without true terms are not
    benchmark proteins and are ignored.
    """
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(f"Fmax needs two [N, terms] arrays, got {y_true.shape} and "
                         f"{scores.shape}")
    annotated = y_true.any(axis=1)
    y_true, scores = y_true[annotated], scores[annotated]
    if len(y_true) == 0:
        return float("nan"), float("nan")
    n_true = y_true.sum(axis=1)
    best, best_t = 0.0, float(thresholds[0])
    for t in thresholds:
        pred = scores >= t
        n_pred = pred.sum(axis=1)
        covered = n_pred > 0
        if not covered.any():
            continue
        tp = (pred & y_true).sum(axis=1)
        precision = np.mean(tp[covered] / n_pred[covered])
        recall = np.mean(tp / n_true)
        if precision + recall > 0:
            f = 2 * precision * recall / (precision + recall)
            if f > best:
                best, best_t = float(f), float(t)
    return best, best_t
