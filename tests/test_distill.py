"""Distillation on Ray Train: losses fall on held-out proteins, the student is saved, logged
and registered (``models:/mtdp-student/N`` embeds), a killed worker resumes from its
checkpoint, ``--resume`` continues the step count, and 2-worker DDP follows 1 worker."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtdp.embed import embed_sequences
from mtdp.distill import DistillConfig, run_distill
from test_selector import deeploc_sample, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def two_learnable_teachers(seqs: list[str]) -> dict[str, np.ndarray]:
    """Two different, learnable functions of the sequence (composition and dipeptide-ish
    hydrophobicity profile), standing in for two real teachers."""
    aa = "ACDEFGHIKLMNPQRSTVWY"
    comp = np.array([[s.count(a) / len(s) for a in aa] for s in seqs], dtype=np.float32)
    comp = (comp - comp.mean(0)) / comp.std(0).clip(1e-6)
    rng = np.random.default_rng(1)
    a = comp @ rng.normal(size=(20, 24)).astype(np.float32) / np.sqrt(20)
    b = np.tanh(comp @ rng.normal(size=(20, 16)).astype(np.float32) / np.sqrt(10)) * 3
    return {"teacher_a": a, "teacher_b": b}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, data_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("teachers")
    ids, seqs = deeploc_sample(data_dir, 220, 64)
    write_dataset(d, ids, seqs, two_learnable_teachers(seqs), max_len=64)
    return d


def _cfg(dataset: Path, out: Path, **kw) -> DistillConfig:
    base = dict(data=str(dataset), output=str(out), preset="tiny", dropout=0.0, batch_size=16,
                lr=3e-3, kd_weight=4.0, warmup_ratio=0.1, selector="uniform", eval_every=12,
                checkpoint_every=12, log_every=6, shuffle_buffer=0, max_steps=36, seed=0)
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def killed_run(ray_session, dataset: Path, tmp_path_factory):
    """One worker, killed (SIGKILL) at step 14 on its first attempt; the last checkpoint was
    at step 12, so Ray Train restarts the worker group from it. Its rows are streamed."""
    out = tmp_path_factory.mktemp("run1")
    # max_failures leaves room for one spurious restart: under heavy CPU load Ray 2.60's
    # PlacementGroupCleaner can misread the controller as dead and remove the placement group.
    cfg = _cfg(dataset, out, run_name="r1", fail_at_step=14, max_failures=3,
               train_memory_mb=0)  # streamed: the DDP test below holds its rows in memory
    return cfg, run_distill(cfg)


@pytest.mark.slow
def test_distillation_lowers_held_out_losses_and_registers(killed_run):
    cfg, res = killed_run
    steps = [h["step"] for h in res.history]
    assert steps == [12, 24, 36] and res.steps == 36
    first, last = res.history[0], res.history[-1]
    print({k: (round(first[k], 3), round(last[k], 3)) for k in first if k.startswith("eval/")})
    for key in ("eval/total", "eval/mlm", "eval/kd_teacher_a", "eval/kd_teacher_b"):
        assert last[key] < first[key], key
    # The saved student loads and embeds; the registry URI resolves to the same weights.
    from mtdp.models.registry import load_embedder

    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]
    local = embed_sequences(load_embedder(res.student_dir, device="cpu"), seqs)
    assert res.model_uri and res.model_uri.startswith("models:/mtdp-student/")
    remote = embed_sequences(load_embedder(res.model_uri, device="cpu"), seqs)
    assert local.shape == (2, 128) and np.allclose(local, remote, atol=1e-6)
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(res.model_uri)
    assert np.allclose(pyfunc.predict(seqs), local, atol=1e-5)


@pytest.mark.slow
def test_killed_worker_resumed_from_checkpoint(killed_run):
    cfg, res = killed_run
    run_dir = Path(cfg.output) / "ray" / "r1"
    assert (run_dir / ".injected_failure_done").exists()     # the kill really happened
    # Steps 24 and 36 were reached by a restarted worker group that began from a checkpoint.
    assert res.history[0]["resumed_from_step"] == -1
    assert res.history[-1]["resumed_from_step"] >= 12


@pytest.mark.slow
def test_resume_continues_step_count(killed_run):
    cfg, res = killed_run
    more = DistillConfig(**{**cfg.__dict__, "resume": True, "max_steps": 48,
                            "fail_at_step": 0, "register_as": ""})
    res2 = run_distill(more)
    assert res2.run_name == "r1" and res2.steps == 48
    assert [h["step"] for h in res2.history] == [12, 24, 36, 48]
    assert res2.history[-1]["resumed_from_step"] == 36
    # Without --resume an existing run name is refused rather than silently restarted.
    with pytest.raises(ValueError, match="already exists"):
        run_distill(DistillConfig(**{**cfg.__dict__, "fail_at_step": 0}))


@pytest.mark.slow
def test_two_worker_ddp_matches_one_worker(killed_run, tmp_path):
    cfg, res = killed_run
    # No cpus_per_worker: the workers are sized from the cluster (2 CPUs), leaving one for
    # Ray Data's read tasks; 1 CPU each would wait forever for them.
    # Each rank holds its rows in memory (the default), where the one-worker run streamed
    # them from Ray Data every epoch (train_memory_mb 0): both reach the same held-out losses.
    res2 = run_distill(_cfg(Path(cfg.data), tmp_path, run_name="ddp", num_workers=2,
                            register_as=""))
    one = {h["step"]: h["eval/total"] for h in res.history}
    two = {h["step"]: h["eval/total"] for h in res2.history}
    print("eval/total 1 worker:", one, "2 workers:", two)
    assert list(two) == [12, 24, 36]
    for step in two:
        assert abs(two[step] - one[step]) / one[step] < 0.05, (step, one[step], two[step])


def test_bad_config_is_refused(dataset: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="multiple of num_workers"):
        run_distill(_cfg(dataset, tmp_path, batch_size=15, num_workers=2))
    with pytest.raises(ValueError, match="single:nobody"):
        run_distill(_cfg(dataset, tmp_path, selector="single:nobody"))
    with pytest.raises(FileNotFoundError, match="not a finished teacher dataset"):
        run_distill(_cfg(tmp_path, tmp_path))


def test_job_command_line(tmp_path: Path):
    """jobs/distill.py: YAML < flags, a bare `--resume`, and the example config loads."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("distill_job", ROOT / "jobs" / "distill.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    example = job.build_config(["--config", str(ROOT / "jobs" / "distill.yaml")])
    assert example.selector == "uniform" and example.preset == "tiny" and not example.resume
    cfg = job.build_config(["--config", str(ROOT / "jobs" / "distill.yaml"), "--data", "/d",
                            "--resume", "--run-name", "r1", "--selector", "single:esm"])
    assert (cfg.data, cfg.resume, cfg.run_name, cfg.selector) == ("/d", True, "r1", "single:esm")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        job.build_config(["--config", str(bad)])
    # Recipes (a `distill:` section): the demo with no arguments, any recipe alone; flags
    # beside a recipe are refused (its settings live in the file).
    demo = ROOT / "jobs" / "configs" / "demo.yaml"
    cpu = ROOT / "jobs" / "configs" / "unirep-cpu.yaml"
    assert job.recipe_path([]) == str(demo)
    assert job.recipe_path(["--config", str(cpu)]) == str(cpu)
    assert job.recipe_path(["--config", str(ROOT / "jobs" / "distill.yaml")]) is None
    with pytest.raises(ValueError, match="is a recipe"):
        job.recipe_path(["--config", str(cpu), "--lr", "1"])
    from mtdp.distill.recipe import load_recipe

    recipe = load_recipe(cpu)
    recipe.validate()
    assert recipe.length_rule == "crop" and recipe.residue_window == 8
    assert DistillConfig(**{**recipe.distill, "data": "x"}).residue_head == "shared"
    bad.write_text("distill: {learning_rate: 1}\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_recipe(bad).validate()


def test_rows_in_memory_give_each_epoch_a_fixed_order():
    """A worker's in-memory rows: every epoch a seeded order of all of them (the same again
    for a resumed epoch, so skipping its first batches skips what it trained on), another
    order next epoch; id order with shuffle_buffer 0. No Ray needed."""
    from mtdp.distill.worker import _Worker

    w = object.__new__(_Worker)
    w.cfg, w.world = DistillConfig(data="-", batch_size=4, seed=3, shuffle_buffer=256), 1
    w.rows = {"id": np.array([f"P{i:02d}" for i in range(10)], dtype=object),
              "x": np.arange(10)}
    first = [list(b["x"]) for b in w.epoch_rows(0)]
    assert len(first) == 2 and all(len(b) == 4 for b in first)  # 10 rows: 2 full batches
    assert len(set(sum(first, []))) == 8
    assert [list(b["x"]) for b in w.epoch_rows(0)] == first  # a resumed epoch: same order
    assert [list(b["x"]) for b in w.epoch_rows(1)] != first
    w.cfg = DistillConfig(data="-", batch_size=4, seed=3, shuffle_buffer=0)
    assert [list(b["x"]) for b in w.epoch_rows(5)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
