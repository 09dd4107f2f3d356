"""Benchmark metrics against hand-computed cases and scikit-learn / scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from mtdp.evaluate import metrics as M


def test_classification_metrics_hand_computed():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    # class 0: tp 2 fp 0 fn 1 -> F1 4/5; class 1: tp 1 fp 1 fn 1 -> 1/2; class 2: tp 1 fp 1 fn 0
    # -> 2/3. Supports 3, 2, 1.
    assert M.f1_macro(y_true, y_pred) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert M.f1_weighted(y_true, y_pred) == pytest.approx((3 * 4 / 5 + 2 * 1 / 2 + 2 / 3) / 6)
    assert M.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # recalls 2/3, 1/2, 1
    assert M.balanced_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_classification_metrics_match_sklearn(n_classes):
    rng = np.random.default_rng(n_classes)
    y_true = rng.integers(0, n_classes, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, n_classes, 300))
    assert M.f1_macro(y_true, y_pred) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro"))
    assert M.f1_weighted(y_true, y_pred) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="weighted"))
    assert M.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert M.balanced_accuracy(y_true, y_pred) == pytest.approx(
        skm.balanced_accuracy_score(y_true, y_pred))


def test_f1_macro_when_a_class_is_never_predicted():
    y_true = np.array([0, 1, 1, 1])
    y_pred = np.array([1, 1, 1, 1])
    assert M.f1_macro(y_true, y_pred) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200) + 0.5 * y, 1)  # rounding creates many ties
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))
    # hand case: scores 0.9 (pos), 0.8 (neg), 0.7 (pos): AP = 1/2*1 + 1/2*2/3
    assert M.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    assert np.isnan(M.average_precision([0, 0], [0.1, 0.2]))


def test_macro_aupr_matches_sklearn_over_terms_with_positives():
    rng = np.random.default_rng(1)
    y = (rng.random((80, 6)) < 0.25).astype(float)
    y[:, 5] = 0  # a term without positives is skipped (AP undefined)
    s = rng.random((80, 6)) + 0.4 * y
    expected = skm.average_precision_score(y[:, :5], s[:, :5], average="macro")
    assert M.macro_aupr(y, s) == pytest.approx(expected)


def test_fmax_hand_computed():
    y = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]])
    s = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.4], [0.6, 0.05, 0.7]])
    # t=0.25: precisions 1, 2/3, 1/2 -> 13/18; recalls 1, 1, 1/2 -> 5/6; F = 390/504
    # t=0.50: P 5/6, R 2/3 -> F = 20/27
    # t=0.75: protein 3 predicts nothing, so precision averages over the 2 covered proteins
    #         (1) while recall averages over all 3 (1/2) -> F = 2/3
    f, t = M.fmax(y, s, thresholds=np.array([0.25, 0.5, 0.75]))
    assert f == pytest.approx(390 / 504)
    assert t == 0.25
    assert M.fmax(y, s, thresholds=np.array([0.5]))[0] == pytest.approx(20 / 27)
    assert M.fmax(y, s, thresholds=np.array([0.75]))[0] == pytest.approx(2 / 3)
    # A protein with no true term is not a benchmark protein: it changes nothing.
    y2 = np.vstack([y, [0, 0, 0]])
    s2 = np.vstack([s, [0.99, 0.99, 0.99]])
    assert M.fmax(y2, s2, thresholds=np.array([0.25, 0.5, 0.75]))[0] == pytest.approx(390 / 504)
    # Perfect scores reach 1 on the default CAFA grid.
    assert M.fmax(y, y.astype(float))[0] == pytest.approx(1.0)
    # Coverage: proteins with a prediction at the threshold (t=0.75: proteins 1 and 2).
    assert M.coverage(y, s, 0.25) == 1.0 and M.coverage(y, s, 0.75) == pytest.approx(2 / 3)
    assert M.coverage(y2, s2, 0.75) == pytest.approx(2 / 3)  # unannotated row ignored


def test_micro_aupr_pools_every_protein_term_pair():
    rng = np.random.default_rng(4)
    y = (rng.random((50, 5)) < 0.3).astype(float)
    s = rng.random((50, 5)) + 0.3 * y
    assert M.micro_aupr(y, s) == pytest.approx(
        skm.average_precision_score(y.ravel(), s.ravel()))
    assert M.micro_aupr(y, s) == pytest.approx(skm.average_precision_score(y, s, average="micro"))
    got = M.compute_metrics("multilabel", y, s * 10 - 5)
    assert {"fmax", "fmax_threshold", "fmax_coverage", "micro_aupr", "macro_aupr"} == set(got)


def test_fmax_matches_brute_force_definition():
    rng = np.random.default_rng(2)
    y = rng.random((40, 7)) < 0.3
    y[y.sum(1) == 0, 0] = True
    s = rng.random((40, 7))
    best = 0.0
    for t in M.FMAX_THRESHOLDS:
        precs, recs = [], []
        for i in range(len(y)):
            pred = {j for j in range(7) if s[i, j] >= t}
            true = {j for j in range(7) if y[i, j]}
            if pred:
                precs.append(len(pred & true) / len(pred))
            recs.append(len(pred & true) / len(true))
        if precs:
            p, r = np.mean(precs), np.mean(recs)
            if p + r:
                best = max(best, 2 * p * r / (p + r))
    assert M.fmax(y, s)[0] == pytest.approx(best)


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(3)
    a = np.round(rng.normal(size=100), 1)
    b = np.round(a + rng.normal(size=100), 1)
    assert M.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0])
    assert M.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
    assert M.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert np.isnan(M.pearson([1, 1, 1], [1, 2, 3]))


def test_compute_metrics_by_kind_and_errors():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    got = M.compute_metrics("binary", np.array([0, 1, 1]), logits)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert set(M.compute_metrics("regression", np.arange(5.0), np.arange(5.0))) == {
        "spearman", "pearson", "rmse"}
    ml = M.compute_metrics("multilabel", np.array([[1, 0], [0, 1]]),
                           np.array([[5.0, -5.0], [-5.0, 5.0]]))
    assert ml["fmax"] == pytest.approx(1.0) and ml["macro_aupr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 rows"):
        M.accuracy(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="unknown task kind"):
        M.compute_metrics("ranking", np.zeros(2), np.zeros(2))
