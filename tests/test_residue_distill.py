"""Per-residue distillation: precompute writes a teacher's per-residue states (and their
statistics) when asked, and the distiller matches them through per-residue heads, in process
and on Ray Train. Real sequences (DeepLoc 1.0 test set, 64 residues), tiny random teachers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtdp.distill import DistillConfig, run_distill
from mtdp.distill.batches import TeacherStats, make_batch
from mtdp.distill.core import new_distiller
from mtdp.precompute import PrecomputeConfig, run_precompute
from mtdp.sequences import read_fasta, write_fasta
from mtdp.teacher_data import Manifest, data_files, residue_column, teacher_column

TEACHERS = ["tiny-random-esm2", "tiny-random-t5"]
RES = "tiny-random-t5"


@pytest.fixture(scope="module")
def dataset(ray_session, real_fasta, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("res")
    fasta = d / "in.fasta"
    write_fasta(read_fasta(real_fasta)[:300], fasta)
    cfg = PrecomputeConfig(inputs=[str(fasta)], teachers=TEACHERS, output=str(d / "run"),
                           max_len=64, num_shards=2, batch_tokens=4096, progress=False,
                           track=False, per_residue=[RES], validation_fraction=0.15)
    run_precompute(cfg)
    return d / "run"


def _table(run: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in data_files(run)])


@pytest.mark.slow
def test_precompute_writes_per_residue_states(dataset: Path):
    table = _table(dataset)
    man = Manifest.load(dataset)
    col = residue_column(RES)
    assert residue_column("tiny-random-esm2") not in table.column_names
    typ = table.schema.field(col).type
    assert pa.types.is_list(typ) and typ.value_type.list_size == 32 \
        and typ.value_type.value_type == pa.float16()
    lengths = table["length"].to_pylist()
    states = [np.asarray(x, dtype=np.float32) for x in table[col].to_pylist()]
    assert [len(s) for s in states] == lengths
    # T5Teacher's per-protein embedding is the mean of its per-residue states.
    per_protein = np.stack(table[teacher_column(RES)].to_pylist()).astype(np.float32)
    np.testing.assert_allclose(np.stack([s.mean(0) for s in states]), per_protein, atol=3e-3)
    # Statistics over the train split's residues.
    train = [s for s, sp in zip(states, table["split"].to_pylist()) if sp == "train"]
    flat = np.concatenate(train).astype(np.float64)
    entry = man.teacher(RES)
    assert entry.residue_column == col and not man.teacher("tiny-random-esm2").residue_column
    np.testing.assert_allclose(entry.residue_mean, flat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entry.residue_std, flat.std(0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bad_per_residue_settings_are_refused(dataset: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="not among the teachers"):
        PrecomputeConfig(inputs=[str(tmp_path)], teachers=TEACHERS, output=str(tmp_path / "o"),
                         per_residue=["esm2_t6_8M_UR50D"]).validate()
    man = Manifest.load(dataset)
    with pytest.raises(ValueError, match="no per-residue states for teacher 'tiny-random-esm2'"):
        TeacherStats.from_manifest(man, None, ["tiny-random-esm2"])
    assert list(TeacherStats.from_manifest(man, None, ["all"]).residues) == [RES]


@pytest.mark.slow
def test_residue_loss_is_part_of_the_teachers_loss_and_is_learned(dataset: Path):
    table = _table(dataset)
    man = Manifest.load(dataset)
    rows = {c: np.asarray(table[c].to_pylist(), dtype=object) for c in table.column_names}
    take = lambda idx: {k: v[idx] for k, v in rows.items()}  # noqa: E731
    stats = TeacherStats.from_manifest(man, None, ["all"])
    torch.manual_seed(0)
    cfg = DistillConfig(data="-", selector="uniform", kd_loss="cosine", lr=3e-3, dropout=0.0,
                        residue_teachers=["all"], mlflow=False)
    d = new_distiller(cfg, stats, 64, total_steps=60)
    student = d.student
    assert list(student.residue_heads) == [RES] and student.config.residue_teachers == {RES: 32}
    val = [make_batch(take(np.arange(250, 300)), stats, mlm_prob=0.15, seed=1)]
    assert val[0]["residue_targets"][RES].shape == (50, val[0]["input_ids"].shape[1], 32)

    def losses(weight: float) -> float:
        d.cfg.residue_weight = weight
        return d.evaluate(val)[f"eval/kd_{RES}"]

    per_residue_before = losses(1.0) - losses(0.0)
    assert per_residue_before > 0.5  # untrained: cosine loss ≈ 1 per residue
    d.cfg.residue_weight = 1.0
    rng = np.random.default_rng(0)
    for step in range(60):
        d.train_step(make_batch(take(rng.choice(250, 16, replace=False)), stats,
                                mlm_prob=0.15, seed=step))
    per_residue_after = losses(1.0) - losses(0.0)
    print("per-residue cosine loss", per_residue_before, "->", per_residue_after)
    assert per_residue_after < 0.8 * per_residue_before


@pytest.mark.slow
def test_ray_distill_with_residue_teachers(dataset: Path, tmp_path: Path):
    cfg = DistillConfig(data=str(dataset), output=str(tmp_path), preset="tiny", dropout=0.0,
                        batch_size=16, lr=3e-3, selector="rl", selector_warmup_steps=2,
                        kd_loss="cosine", residue_teachers=[RES], eval_every=4,
                        checkpoint_every=4, log_every=4, shuffle_buffer=0, max_steps=8,
                        register_as="", mlflow=False)
    res = run_distill(cfg)
    from mtdp.models.student import load_student

    student = load_student(res.student_dir)
    assert list(student.residue_heads) == [RES]
    evals = [h for h in res.history if "eval/total" in h]
    assert [h["step"] for h in evals] == [4, 8]
    assert all(np.isfinite(h[f"eval/kd_{RES}"]) for h in evals)
