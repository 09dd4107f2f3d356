"""The UniRep preset's own logic (the run itself is a benchmark, not a test)."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def preset():
    from mtdp_studies import preset_report, unirep_preset

    return SimpleNamespace(SCALES=unirep_preset.SCALES, paired_cell=preset_report.paired_cell)


def test_scales_share_fields_and_are_valid_distill_settings(preset):
    from mtdp.distill import DistillConfig
    from mtdp.losses import KD_KINDS

    keys = set(preset.SCALES["default"])
    for name, scale in preset.SCALES.items():
        assert set(scale) == keys, name
        assert scale["kd_loss"] in KD_KINDS
        DistillConfig(preset=scale["preset"], epochs=scale["epochs"], lr=scale["lr"],
                      kd_loss=scale["kd_loss"], mlm_weight=scale["mlm_weight"],
                      dropout=scale["dropout"])


def test_paired_cell_is_per_fold_difference(preset):
    # Two models on 4 folds of one regression task; differences 0.1, 0.2, -0.1, 0.2.
    a = [0.5, 0.6, 0.3, 0.7]
    b = [0.4, 0.4, 0.4, 0.5]
    rows = [{"model": m, "task": "t", "fold": f, "selected": True, "test_spearman": v}
            for m, vals in (("A", a), ("B", b)) for f, v in enumerate(vals)]
    rows.append({"model": "A", "task": "t", "fold": 0, "selected": False,
                 "test_spearman": 99.0})  # an unselected search trial is ignored
    result = SimpleNamespace(trials=pd.DataFrame(rows))
    cell = preset.paired_cell(result, {"A": "a", "B": "b"}, {"t": "regression"}, "a", "b", "t")
    # mean 0.1, sample std of (0.1, 0.2, -0.1, 0.2) = 0.1414 → SE 0.0707; A wins 3 of 4.
    assert cell == "+0.100 ± 0.071 (3/4)"
    assert preset.paired_cell(result, {"A": "a"}, {"t": "regression"}, "a", "zz", "t") == "n/a"
