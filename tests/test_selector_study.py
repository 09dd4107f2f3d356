"""The selector study's plumbing (the study itself is research): teacher sets with per-window
targets, the plan, and one tiny end-to-end pass on a synthetic labelled pool."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtdp_studies.selector_study import (CREDIT_PROTEINS, Pool, SelectorStudyConfig,
                                         _derangement, composition, expand, study,
                                         teacher_sets)


def _pool(n: int, teachers: tuple[str, str], crop: int = 32, heldout: int = 0) -> Pool:
    rng = np.random.default_rng(0)
    seqs = np.array(["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), crop))
                     for _ in range(n)], dtype=object)
    protein = {t: rng.normal(size=(n, d)).astype(np.float32) for t, d in zip(teachers, (6, 5))}
    windows = {t: rng.normal(size=(n, crop // 8, protein[t].shape[1])).astype(np.float16)
               for t in teachers}
    split = np.array(["train"] * (n - heldout) + ["credit"] * min(heldout, CREDIT_PROTEINS)
                     + ["scored"] * max(0, heldout - CREDIT_PROTEINS))
    return Pool(np.array([f"p{i}" for i in range(n)]), seqs, np.arange(n) % 3 == 0,
                np.arange(n) % 2 == 0, split, protein, windows)


def test_derangement_gives_every_protein_another_ones_targets():
    src = _derangement(50, np.random.default_rng(3))
    assert sorted(src) == list(range(50)) and not np.any(src == np.arange(50))


def test_window_composition_averages_to_the_protein_composition():
    per_protein, per_window = composition(np.array(["ACDEFGHI" * 2, "AAAAAAAACCCCCCCC"]), 16)
    assert per_window.shape == (2, 2, 20)
    assert np.allclose(per_window.astype(np.float32).mean(1), per_protein, atol=1e-3)
    assert per_protein[1, 0] == 0.5 and per_window[1, 0, 0] == 1.0


def test_teacher_sets_are_real_where_marked_good_and_another_proteins_elsewhere():
    cfg = SelectorStudyConfig(teachers="t1,t2", crop=32)
    pool = _pool(40, ("t1", "t2"))
    sets = teacher_sets(cfg, pool)
    het = sets["hetero-membrane"]
    (ka, a), (kb, b) = het.protein.items()
    m = pool.membrane
    assert (ka, kb) == ("t1@membrane", "t2@soluble")
    assert np.array_equal(a[m], pool.protein["t1"][m])
    assert not np.any(np.all(a[~m] == pool.protein["t1"][~m], axis=1))
    assert np.array_equal(b[~m], pool.protein["t2"][~m])
    # windows travel with their protein targets: a shuffled protein's windows are the donor's
    donor = [int(np.flatnonzero(np.all(pool.protein["t1"] == a[i], axis=1))[0])
             for i in np.flatnonzero(~m)]
    assert np.array_equal(het.windows[ka][~m], pool.windows["t1"][donor])
    assert np.array_equal(het.good, np.stack([m, ~m], 1).astype(np.float32))
    junk = sets["junk"]
    assert list(junk.protein) == ["t1", "composition", "t1-shuffled"]
    assert junk.good[:, 0].all() and not junk.good[:, 1:].any()
    plan = expand(SelectorStudyConfig(plan="junk/single,real/rl+contrast/batch"), sets)
    assert [lab for _, lab, _ in plan] == ["single:t1", "single:composition",
                                           "single:t1-shuffled", "rl+contrast/batch"]
    assert plan[-1][2]["selector_credit"] == "batch"
    for bad in ("real/nope", "nope/uniform"):
        with pytest.raises(ValueError, match="plan"):
            SelectorStudyConfig(plan=bad).validate()
    with pytest.raises(ValueError, match="multiple"):
        SelectorStudyConfig(crop=36).validate()


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path: Path):
    from mtdp_studies.selector_eval import load_tasks

    cfg = SelectorStudyConfig(teachers="kmer1,kmer2", crop=32, heldout=CREDIT_PROTEINS + 64,
                              steps=6, plan="hetero-membrane/uniform,hetero-membrane/oracle,"
                              "hetero-membrane/rl+contrast,junk/rl", tasks="localization,membrane",
                              task_proteins=60, folds=2, workdir=str(tmp_path / "w"),
                              results=str(tmp_path / "r.md"),
                              reference_store=str(tmp_path / "store"))
    tasks = load_tasks(cfg)
    assert tasks[1].name == "membrane" and tasks[1].sequences is tasks[0].sequences
    pool = _pool(CREDIT_PROTEINS + 64 + 80, ("kmer1", "kmer2"), heldout=cfg.heldout)
    md = study(cfg, tasks, pool, log=print).read_text()
    assert "## `hetero-membrane`" in md and "oracle − uniform" in md and "## `junk`" in md
    assert "rl+contrast − oracle" in md and "random-init student" in md
    files = sorted((tmp_path / "w").rglob("*.json"))
    assert len(files) == 4, files
    stamps = [f.stat().st_mtime_ns for f in files]
    study(cfg, tasks, pool, log=print)  # a rerun reuses every student
    assert [f.stat().st_mtime_ns for f in files] == stamps
