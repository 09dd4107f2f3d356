"""Transfer measured honestly: gain capture over composition with its jackknife SE, R² of a
teacher's embedding (own head or cross-validated ridge), and the report's transfer section."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mtdp.evaluate.transfer import (gain_capture, gain_capture_difference, r2, ratio, ridge_r2,
                                   transfer_section)


def test_gain_capture_is_the_share_of_the_teachers_gain_over_composition():
    base = np.array([0.80, 0.78, 0.82, 0.81, 0.79])
    teacher = base + 0.10
    half = base + 0.05
    gc, se = gain_capture(half, teacher, base)
    assert gc == pytest.approx(0.5) and se == pytest.approx(0.0, abs=1e-12)
    # The ratio flatters: half the gain reads as 0.94 of the teacher.
    assert ratio(half, teacher) == pytest.approx(0.945, abs=0.01)
    noisy = half + np.array([0.02, -0.02, 0.01, -0.01, 0.0])
    gc, se = gain_capture(noisy, teacher, base)
    # Jackknife of the ratio of means, by hand for fold 0 left out.
    keep = np.arange(5) != 0
    loo0 = (noisy[keep] - base[keep]).mean() / 0.10
    assert gc == pytest.approx(0.5) and 0.0 < se < 0.1
    loo = [(noisy[np.arange(5) != i] - base[np.arange(5) != i]).mean() / 0.10 for i in range(5)]
    assert loo[0] == pytest.approx(loo0)
    assert se == pytest.approx(np.sqrt(4 / 5 * ((np.array(loo) - np.mean(loo)) ** 2).sum()))
    assert np.isnan(gain_capture(half, base, base)[0])  # no gain to capture
    with pytest.raises(ValueError, match="paired"):
        gain_capture(half[:4], teacher, base)


def test_r2_of_a_teacher_from_its_own_and_from_unrelated_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 20))
    y = x @ rng.normal(size=(20, 30)) + 0.1 * rng.normal(size=(400, 30))
    assert ridge_r2(x, y) > 0.95
    assert ridge_r2(rng.normal(size=(400, 20)), y) < 0.05
    assert r2(y, y) == pytest.approx(1.0) and r2(y, np.tile(y.mean(0), (400, 1))) == \
        pytest.approx(0.0)


def test_the_report_says_ratio_gain_capture_and_r2():
    class M:  # what the section reads of a ModelInfo
        def __init__(self, name):
            self.name, self.spec = name, name

    class T:
        name, primary_metric = "localization", "accuracy"

        def __len__(self):
            return 2000

    rows = []
    for model, add in (("aac", 0.0), ("teacher", 0.1), ("student", 0.05)):
        for f in range(5):
            rows.append({"model": model, "task": "localization", "fold": f, "selected": True,
                         "test_accuracy": 0.7 + add + 0.01 * f})
    rng = np.random.default_rng(1)
    y = rng.normal(size=(2000, 8))
    arrays = {"teacher||localization": y, "aac||localization": rng.normal(size=(2000, 4)),
              "student||localization": y[:, :4] + 0.1 * rng.normal(size=(2000, 4))}
    lines = transfer_section(pd.DataFrame(rows), [T()], [M("aac"), M("teacher"), M("student")],
                             arrays, "teacher")
    text = "\n".join(lines)
    assert "| student | 0.939 · GC 0.50 ± 0.00 |" in text and "ceiling" in text
    assert not any(ln.startswith(("| teacher | 1.0", "| aac | 0.")) and "GC" in ln
                   for ln in lines)
    r2_rows = {m.group(1): float(m.group(2)) for ln in lines
               if (m := re.fullmatch(r"\| (\w+) \| (-?[0-9.]+) \|", ln))}
    assert r2_rows["teacher"] > 0.9 and 0.3 < r2_rows["student"] < 0.6 and r2_rows["aac"] < 0.05


def test_gain_capture_difference_is_paired():
    """Two students on the same folds: the difference of their gain captures, and an SE that
    sees the shared fold noise (smaller than either student's own SE)."""
    rng = np.random.default_rng(1)
    base = np.array([0.40, 0.50, 0.45, 0.55, 0.48])
    teacher = base + 0.2
    fold_noise = rng.normal(0, 0.03, 5)
    a = base + 0.12 + fold_noise + rng.normal(0, 0.002, 5)
    b = base + 0.08 + fold_noise + rng.normal(0, 0.002, 5)
    d, se = gain_capture_difference(a, b, teacher, base)
    assert d == pytest.approx(gain_capture(a, teacher, base)[0]
                              - gain_capture(b, teacher, base)[0])
    assert d == pytest.approx(0.2, abs=0.03) and se < 0.5 * gain_capture(a, teacher, base)[1]
    assert np.isnan(gain_capture_difference(a, b, base, base)[0])
    with pytest.raises(ValueError, match="paired"):
        gain_capture_difference(a[:4], b, teacher, base)
