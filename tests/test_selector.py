"""Losses and the teacher selector, trained without Ray (fast): on real sequences with one
informative teacher (a fixed function of amino-acid composition) and one pure-noise teacher,
the RL selector learns to drop the noise teacher; uniform mode keeps both."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtdp.evaluate.pools import first_proteins
from mtdp.distill import DistillConfig
from mtdp.distill.batches import TeacherStats, make_batch, split_batch
from mtdp.distill.core import new_distiller
from mtdp.losses import IGNORE, kd_loss, mask_tokens, mlm_loss
from mtdp.selector import TeacherSelector, combine, parse_mode
from mtdp.teacher_data import Manifest, TeacherEntry, split_of, teacher_column
from mtdp.tokenizer import MASK_ID, ResidueTokenizer

AA = "ACDEFGHIKLMNPQRSTVWY"


def deeploc_sample(data_dir: Path, n: int, max_len: int) -> tuple[list[str], list[str]]:
    """The first ``n`` DeepLoc 2.0 partition 0–3 proteins (ids, prepared sequences)."""
    return first_proteins(n, max_len, data_dir=data_dir)


def informative_and_noise(seqs: list[str], dim: int = 32, seed: int = 0
                          ) -> dict[str, np.ndarray]:
    """Teacher features: ``informative`` = a fixed linear map of the amino-acid composition
    (learnable from the sequence); ``noise`` = i.i.d. Gaussian per protein (unlearnable)."""
    rng = np.random.default_rng(seed)
    comp = np.array([[s.count(a) / len(s) for a in AA] for s in seqs], dtype=np.float32)
    comp = (comp - comp.mean(0)) / comp.std(0).clip(1e-6)
    w = rng.normal(size=(len(AA), dim)).astype(np.float32) / np.sqrt(len(AA))
    return {"informative": comp @ w, "noise": rng.normal(size=(len(seqs), dim)).astype(np.float32)}


def write_dataset(run_dir: Path, ids: list[str], seqs: list[str], teachers: dict[str, np.ndarray],
                  max_len: int, splits: list[str] | None = None, files: int = 2) -> Manifest:
    """Write a teacher dataset in the precompute contract (mtdp.teacher_data) directly."""
    splits = splits or [split_of(i, 0.1) for i in ids]
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    cols = {"id": pa.array(ids), "sequence": pa.array(seqs),
            "length": pa.array([len(s) for s in seqs], pa.int32()), "split": pa.array(splits)}
    for name, x in teachers.items():
        cols[teacher_column(name)] = pa.FixedSizeListArray.from_arrays(
            pa.array(x.astype(np.float16).ravel(), pa.float16()), x.shape[1])
    table = pa.table(cols)
    step = -(-len(ids) // files)
    for f in range(files):
        pq.write_table(table.slice(f * step, step), run_dir / "data" / f"part-{f:05d}.parquet")
    train = np.array([s == "train" for s in splits])
    entries = [TeacherEntry(name=n, dim=x.shape[1], source="synthetic",
                            mean=x[train].astype(np.float16).astype(np.float32).mean(0).tolist(),
                            std=x[train].astype(np.float16).astype(np.float32).std(0).tolist())
               for n, x in teachers.items()]
    man = Manifest(teachers=entries, max_len=max_len, rows=len(ids), inputs=["synthetic"],
                   validation_fraction=0.1,
                   split_counts={s: splits.count(s) for s in ("train", "validation")})
    man.save(run_dir)
    return man


# ---- losses ------------------------------------------------------------------------------
def test_masking_targets_residues_only_and_is_keyed_by_id():
    tok = ResidueTokenizer()
    ids, _ = tok.batch_encode(["MKTAYIAKQR" * 5, "ACD"])
    masked, labels = mask_tokens(ids, seed=3, keys=["a", "b"])
    target = labels != IGNORE
    assert target.sum(1).min() >= 1                           # every row has a target
    assert not target[ids == 0].any() and not target[ids == 1].any()  # never pad / </s>
    assert (masked[~target] == ids[~target]).all()             # only targets change
    assert (masked[target] == MASK_ID).float().mean() > 0.5    # mostly the mask id
    frac = target[0].sum().item() / 50
    assert 0.02 < frac < 0.4
    # The same protein gets the same mask wherever it sits in a batch.
    ids2, _ = tok.batch_encode(["ACD", "MKTAYIAKQR" * 5])
    m2, l2 = mask_tokens(ids2, seed=3, keys=["b", "a"])
    assert torch.equal(l2[1, :51], labels[0, :51]) and torch.equal(m2[1, :51], masked[0, :51])


def test_mlm_loss_uses_masked_positions_only():
    logits = torch.zeros(2, 4, 128)
    labels = torch.full((2, 4), IGNORE)
    labels[0, 1] = 5
    logits[0, 1, 5] = 20.0
    logits[1, :, :] = torch.randn(4, 128)                       # no targets: ignored
    out = mlm_loss(logits, labels)
    assert out.shape == (2,) and out[0] < 1e-3 and out[1] == 0


def test_kd_loss_variants():
    t = torch.randn(4, 16)
    for kind in ("kl", "cosine", "mse"):
        same = kd_loss(t, t, kind=kind)
        other = kd_loss(torch.randn(4, 16), t, kind=kind)
        assert same.shape == (4,) and same.abs().max() < 1e-5 and (other > same).all()
    # τ² scaling keeps gradients comparable: KL at τ=2 is 4·KL of the softened distributions.
    s = torch.randn(4, 16)
    soft = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.softmax(t / 2, -1),
                                      reduction="none").sum(-1)
    assert torch.allclose(kd_loss(s, t, kind="kl", temperature=2.0), 4 * soft, atol=1e-5)
    with pytest.raises(ValueError, match="unknown KD loss"):
        kd_loss(s, t, kind="l1")
    with pytest.raises(ValueError, match="shape"):
        kd_loss(s, t[:, :8])


def test_modes_and_combine():
    names = ["a", "b", "c"]
    assert parse_mode("single:b", names) == ("single", 1)
    with pytest.raises(ValueError, match="not among"):
        parse_mode("single:z", names)
    with pytest.raises(ValueError, match="unknown selector mode"):
        parse_mode("best", names)
    kd = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    sel = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(combine(kd, sel), torch.tensor([2.0, 0.0]))  # none selected: no KD
    pooled, lengths = torch.randn(64, 8), torch.full((64,), 100)
    for mode, check in [("uniform", lambda s: (s == 1).all()),
                        ("none", lambda s: (s == 0).all()),
                        ("single:c", lambda s: (s[:, 2] == 1).all() and (s[:, :2] == 0).all()),
                        ("random", lambda s: (s.sum(1) == 1).all() and len(set(
                            s.argmax(1).tolist())) == 3)]:
        selector = TeacherSelector(names, 8, mode=mode)
        assert check(selector.select(pooled, torch.rand(64, 3), lengths)), mode


def test_token_budget_micro_batches_cover_the_batch(data_dir: Path):
    ids, seqs = deeploc_sample(data_dir, 16, 200)
    feats = informative_and_noise(seqs, dim=8)
    man = Manifest(teachers=[TeacherEntry(n, 8, "x", mean=[0.0] * 8, std=[1.0] * 8)
                             for n in feats], max_len=200, rows=16)
    stats = TeacherStats.from_manifest(man)
    rows = {"id": np.array(ids), "sequence": np.array(seqs),
            **{teacher_column(n): x for n, x in feats.items()}}
    batch = make_batch(rows, stats, mlm_prob=0.15, seed=0)
    micro = split_batch(batch, 1000)
    assert len(micro) > 1
    assert sorted(i for m in micro for i in m["ids"]) == sorted(ids)
    assert all(m["input_ids"].numel() <= 1000 or len(m["ids"]) == 1 for m in micro)


# ---- the selector learns ------------------------------------------------------------------
def _train(mode: str, data_dir: Path, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster and deterministic on a busy host
    try:
        return _train_steps(mode, data_dir, steps)
    finally:
        torch.set_num_threads(threads)


def _synthetic(ids: list[str], seqs: list[str], feats: dict[str, np.ndarray], max_len: int):
    """Teacher statistics of synthetic features and ``take(idx)`` → their dataset rows."""
    man = Manifest(teachers=[TeacherEntry(n, x.shape[1], "synthetic", mean=x.mean(0).tolist(),
                                          std=x.std(0).tolist()) for n, x in feats.items()],
                   max_len=max_len, rows=len(ids))
    rows = {"id": np.array(ids), "sequence": np.array(seqs),
            **{teacher_column(n): x.astype(np.float32) for n, x in feats.items()}}
    return TeacherStats.from_manifest(man), lambda idx: {k: v[idx] for k, v in rows.items()}


def _train_steps(mode: str, data_dir: Path, steps: int
                 ) -> tuple[dict[str, float], dict[str, float]]:
    torch.manual_seed(0)
    ids, seqs = deeploc_sample(data_dir, 700, 64)
    stats, take = _synthetic(ids, seqs, informative_and_noise(seqs), 64)
    cfg = DistillConfig(data="-", selector=mode, batch_size=32, lr=1e-3, warmup_ratio=0.05,
                        selector_lr=3e-3, selector_warmup_steps=10, dropout=0.0)
    distiller = new_distiller(cfg, stats, 64, total_steps=steps)
    distiller.reward_batch = make_batch(take(np.arange(32)), stats, mlm_prob=0.15, seed=7)
    rng = np.random.default_rng(0)
    late: list[dict[str, float]] = []
    for step in range(steps):
        idx = rng.choice(np.arange(100, len(ids)), 32, replace=False)
        distiller.train_step(make_batch(take(idx), stats, mlm_prob=0.15, seed=step))
        rates = distiller.selector.rates()
        if step >= steps - 20:
            late.append(rates)
    final = {k: float(np.mean([r[k] for r in late])) for k in late[0]}
    ev = distiller.evaluate([make_batch(take(np.arange(32, 100)), stats, mlm_prob=0.15,
                                        seed=1)])
    return final, ev


def test_rl_selector_drops_the_noise_teacher(data_dir: Path):
    rates, ev = _train("rl", data_dir, steps=120)
    print("rl selection rates over the last 20 steps:", rates, ev)
    assert rates["noise"] < 0.35, rates
    assert rates["informative"] > 0.85, rates
    assert rates["informative"] - rates["noise"] > 0.5, rates


def test_uniform_mode_keeps_every_teacher(data_dir: Path):
    rates, _ = _train("uniform", data_dir, steps=20)
    assert rates == {"informative": 1.0, "noise": 1.0}


def _heterogeneous(seqs: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Teacher A: the informative features for the more hydrophobic half of the proteins, other
    proteins' features for the rest; teacher B the reverse. The rule is never shown to the
    selector. Returns the features, the group (A's half) and the good-teacher matrix."""
    inf = informative_and_noise(seqs)["informative"]
    hyd = np.array([sum(c in "AILMFVW" for c in s) / len(s) for s in seqs])
    g = hyd > np.median(hyd)
    rng = np.random.default_rng(1)
    shuf = inf[rng.permutation(len(seqs))]
    feats = {"A": np.where(g[:, None], inf, shuf), "B": np.where(g[:, None], shuf, inf)}
    return feats, g, np.stack([g, ~g], 1).astype(np.float32)


def _hetero_rates(data_dir: Path, steps: int, **overrides) -> np.ndarray:
    """Train on the heterogeneous teachers; returns the final policy's mean selection
    probability [teacher, group] (group 0: A's half, 1: B's half) on unseen proteins."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ids, seqs = deeploc_sample(data_dir, 700, 64)
    feats, g, good = _heterogeneous(seqs)
    man = Manifest(teachers=[TeacherEntry(n, x.shape[1], "synthetic", mean=x.mean(0).tolist(),
                                          std=x.std(0).tolist()) for n, x in feats.items()],
                   max_len=64, rows=len(ids))
    stats = TeacherStats.from_manifest(man)
    cfg = DistillConfig(data="-", batch_size=32, lr=1e-3, warmup_ratio=0.05, selector_lr=3e-3,
                        selector_warmup_steps=10, dropout=0.0, **overrides)
    d = new_distiller(cfg, stats, 64, total_steps=steps)
    rows = {"id": np.array(ids), "sequence": np.array(seqs), "good_teachers": good,
            **{teacher_column(n): x.astype(np.float32) for n, x in feats.items()}}
    take = lambda idx: {k: v[idx] for k, v in rows.items()}  # noqa: E731
    d.reward_batch = make_batch(take(np.arange(32)), stats, mlm_prob=0.15, seed=7)
    # Proteins 200-299: the contrast credit's held-out proteins; training from 300 on.
    d.credit_batches = [make_batch(take(np.arange(i, i + 16)), stats, mlm_prob=0.15, seed=7)
                        for i in range(200, 300, 16)]
    rng = np.random.default_rng(0)
    for step in range(steps):
        idx = rng.choice(np.arange(300, len(ids)), 32, replace=False)
        d.train_step(make_batch(take(idx), stats, mlm_prob=0.15, seed=step))
    b = make_batch(take(np.arange(32, 200)), stats, mlm_prob=0.15, seed=1)
    with torch.no_grad():
        res = d.forward(b, model=d.student)
        p = d.selector.probabilities(d.selector.state(res["pooled"], res["kd"], b["lengths"]))
    grp = g[32:200]
    return np.array([[float(p[grp, k].mean()), float(p[~grp, k].mean())] for k in range(2)])


@pytest.mark.slow
def test_contrast_reward_selects_per_protein_where_the_heldout_reward_cannot(data_dir: Path):
    threads = torch.get_num_threads()
    try:
        contrast = _hetero_rates(data_dir, 500, selector="rl", selector_reward="contrast")
        heldout = _hetero_rates(data_dir, 500, selector="rl")
    finally:
        torch.set_num_threads(threads)
    print("P(select) [teacher A, B] x [A's half, B's half]\ncontrast", contrast,
          "\nheldout", heldout)
    # contrast: each teacher is chosen far more often for the proteins it is real for.
    assert contrast[0, 0] - contrast[0, 1] > 0.3, contrast
    assert contrast[1, 1] - contrast[1, 0] > 0.3, contrast
    # heldout: one credit per teacher per step, the same for every protein: no per-protein rule.
    assert abs(heldout[0, 0] - heldout[0, 1]) < 0.15 and abs(heldout[1, 1] - heldout[1, 0]) < 0.15


def test_oracle_mode_uses_the_known_good_teachers_and_only_in_studies():
    sel = TeacherSelector(["a", "b"], 4, mode="oracle")
    good = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    kd = torch.ones(3, 2)
    assert torch.equal(sel.select(torch.zeros(3, 4), kd, torch.ones(3), good), good)
    with pytest.raises(ValueError, match="known-good"):
        sel.select(torch.zeros(3, 4), kd, torch.ones(3))
    with pytest.raises(ValueError, match="controlled studies only"):
        DistillConfig(data="x", selector="oracle").validate()


def test_state_variants_leave_out_their_part():
    pooled, kd, lengths = torch.randn(5, 8), torch.rand(5, 2) + 0.5, torch.full((5,), 100)
    full = TeacherSelector(["a", "b"], 8).state(pooled, kd, lengths)
    loss = TeacherSelector(["a", "b"], 8, state="loss").state(pooled, kd, lengths)
    emb = TeacherSelector(["a", "b"], 8, state="embedding").state(pooled, kd, lengths)
    assert full.shape == loss.shape == emb.shape == (5, 11)
    assert torch.all(loss[:, :8] == 0) and torch.allclose(loss[:, 8:], full[:, 8:])
    assert torch.all(emb[:, 8:10] == 0) and torch.allclose(emb[:, :8], full[:, :8])
    with pytest.raises(ValueError, match="reward"):
        TeacherSelector(["a"], 8, reward="oracle")


def test_heldout_credit_needs_heldout_proteins_and_learns_from_them(data_dir: Path):
    ids, seqs = deeploc_sample(data_dir, 80, 48)
    stats, take = _synthetic(ids, seqs, informative_and_noise(seqs), 48)
    cfg = DistillConfig(data="-", batch_size=8, selector="rl", selector_reward="contrast",
                        selector_warmup_steps=0, dropout=0.0)
    assert cfg.selector_credit == "heldout"
    d = new_distiller(cfg, stats, 48, total_steps=10)
    train = make_batch(take(np.arange(40, 48)), stats, mlm_prob=0.15, seed=0)
    with pytest.raises(ValueError, match="held-out proteins"):
        d.train_step(train)
    d.credit_batches = [make_batch(take(np.arange(i, i + 8)), stats, mlm_prob=0.15, seed=7)
                        for i in (0, 8)]
    before = [p.detach().clone() for p in d.selector.policy.parameters()]
    seen = []
    original = d.selector.add_credit
    d.selector.add_credit = lambda c, state=None: (seen.append((c.shape, state is not None)),
                                                    original(c, state))[1]
    for _ in range(3):
        d.train_step(train)
    # One held-out batch per step, in turn, with its states; none from the training batch.
    assert seen == [((8, 2), True)] * 3 and d._credit_turn == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, d.selector.policy.parameters()))
    batch_cfg = DistillConfig(data="-", batch_size=8, selector="rl", selector_reward="contrast",
                              selector_warmup_steps=0, dropout=0.0, selector_credit="batch")
    d2 = new_distiller(batch_cfg, stats, 48, total_steps=10)
    d2.train_step(train)  # the training batch's own credit: no held-out proteins needed
    assert d2._credit_turn == 0
