"""The selector study's plumbing (the study itself is a benchmark): teacher sets, the run plan
and one tiny end-to-end pass with composition teachers standing in for the UniReps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtdp_studies.selector_study import (Pool, SelectorStudyConfig, _shuffled, run_study,
                                             runs, teacher_sets)


def _pool(n: int = 40) -> Pool:
    rng = np.random.default_rng(0)
    teach = {k: rng.normal(size=(n, d)).astype(np.float32)
             for k, d in (("t1", 6), ("t2", 5), ("t3", 4), ("kmer2", 3))}
    return Pool(np.array([f"p{i}" for i in range(n)]), ["ACDE" * 5] * n,
                np.arange(n) % 3 == 0, np.where(np.arange(n) % 2 == 0, "Metazoa", "Fungi"),
                np.array(["Cytoplasm"] * n), np.zeros(n, dtype=bool), teach)


def test_shuffled_teacher_gives_every_protein_another_ones_features():
    x = np.arange(50)[:, None].astype(float)
    y = _shuffled(x, np.random.default_rng(3))
    assert sorted(y[:, 0]) == list(range(50)) and not np.any(y[:, 0] == x[:, 0])


def test_teacher_sets_are_real_where_marked_good_and_shuffled_elsewhere():
    cfg = SelectorStudyConfig(teachers="t1,t2,t3")
    pool = _pool()
    sets = teacher_sets(cfg, pool)
    het = sets["hetero-membrane"]
    a, b = het.targets.values()
    m = pool.membrane
    assert np.array_equal(a[m], pool.teach["t1"][m]) and not np.any(
        np.all(a[~m] == pool.teach["t1"][~m], axis=1))
    assert np.array_equal(b[~m], pool.teach["t2"][~m])
    assert np.array_equal(het.good, np.stack([m, ~m], 1).astype(np.float32))
    assert sets["junk"].good[:, 0].all() and not sets["junk"].good[:, 1:].any()
    plan = runs(cfg, sets)
    labels = {(s, lab) for s, lab, _ in plan}
    assert ("real", "oracle") not in labels and ("hetero-kingdom", "oracle") in labels
    assert ("junk", "single:t1-shuffled") in labels and ("real", "rl+contrast") in labels
    assert ("hetero-membrane", "rl+align") in labels and ("real", "rl+align") not in labels
    with pytest.raises(ValueError, match="sets"):
        SelectorStudyConfig(sets="real,nope").validate()


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path: Path):
    cfg = SelectorStudyConfig(pool=96, epochs=2, batch_size=16, teachers="kmer2,aac,kmer1",
                              composition="kmer3", sets="real,hetero-membrane",
                              modes="uniform,oracle", variants="rl+contrast",
                              tasks="membrane", task_proteins=40, folds=2,
                              workdir=str(tmp_path / "w"), results=str(tmp_path / "r"))
    md = run_study(cfg, log=print).read_text()
    assert "Default selector: `" in md and "## `hetero-membrane`" in md
    assert "rl+contrast − uniform" in md and "oracle" in md
    # real: uniform, rl+contrast, none (MLM only); hetero-membrane: uniform, oracle, rl+contrast
    files = sorted((tmp_path / "w").rglob("*.json"))
    assert len(files) == 6, files
    stamps = [f.stat().st_mtime_ns for f in files]
    run_study(cfg, log=print)  # a rerun reuses every student
    assert [f.stat().st_mtime_ns for f in files] == stamps
