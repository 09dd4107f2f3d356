"""Multi-teacher distillation of the student on Ray Train (DDP), with the teacher selector:
the driver (:func:`run_distill`).

A teacher dataset written by :mod:`mtdp.precompute` is validated and read with Ray Data
(:func:`mtdp.teacher_data.load_teacher_dataset`) and streamed to each Ray Train worker
(:mod:`.worker`); every step the student sees MLM-masked sequences and is trained on
``mlm_weight · MLM + kd_weight · KD`` (:mod:`.core`). Checkpoints are reported every
``checkpoint_every`` steps and at each epoch end; with ``FailureConfig(max_failures)`` a
crashed worker group restarts from the last one. ``--resume`` (same ``run_name`` and
``storage_path``) continues a stopped run, step count included (Ray Train V2 hands the latest
checkpoint back through ``ray.train.get_checkpoint``).

Rank 0 logs to MLflow; the driver logs the final student (self-describing directory), and
registers it as a pyfunc model (``mtdp-student`` by default) that ``mtdp embed --model
models:/mtdp-student/N`` can use.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime import init_ray
from ..selector import parse_mode
from ..teacher_data import Manifest, load_teacher_dataset, open_teacher_dataset
from .batches import TeacherStats
from .config import DistillConfig
from .worker import STUDENT_SUBDIR, WorkerPlan, train_loop


@dataclass
class DistillResult:
    """What a finished run produced."""

    run_name: str
    student_dir: str
    metrics: dict[str, Any]
    steps: int
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _newest_run(storage: Path) -> str:
    runs = [p for p in storage.iterdir() if p.is_dir() and any(p.glob("checkpoint_*"))] \
        if storage.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"--resume: no run with checkpoints under {storage}")
    return max(runs, key=lambda p: p.stat().st_mtime).name


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """Metrics of every checkpoint of a run, in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    # Directory names sort by time: a step re-reported after a restart keeps its newest.
    for m in sorted(run_dir.glob("checkpoint_*/metrics.json")):
        d = json.loads(m.read_text())
        by_step[int(d.get("step", 0))] = d
    return [by_step[k] for k in sorted(by_step)]


def _run_name(cfg: DistillConfig, storage: Path) -> str:
    """The run's name: the one to resume, or a new one (an existing name is refused)."""
    if cfg.resume:
        name = cfg.run_name or _newest_run(storage)
        if not (storage / name).is_dir():
            raise FileNotFoundError(f"--resume: no run {name!r} under {storage}")
        return name
    name = cfg.run_name or time.strftime("distill-%Y%m%d-%H%M%S")
    if (storage / name).exists():
        raise ValueError(f"run {name!r} already exists under {storage}: pass --resume "
                         "to continue it, or choose another --run-name")
    return name


def worker_cpus(cfg: DistillConfig, cluster_cpus: float) -> float:
    """CPUs per Ray Train worker: ``cpus_per_worker``, or 1 where the cluster has a CPU to
    spare beyond the workers, else an equal share of all but one CPU — Ray Data's read tasks
    need that one, or the run waits forever for them."""
    if cfg.cpus_per_worker is not None:
        return cfg.cpus_per_worker
    spare = cluster_cpus - 1
    if spare < 0.1 * cfg.num_workers:
        raise ValueError(f"the Ray cluster has {cluster_cpus:g} CPU(s): too few for "
                         f"{cfg.num_workers} training worker(s) plus Ray Data's reader; lower "
                         "--num-workers or pass --cpus-per-worker")
    return min(1.0, round(spare / cfg.num_workers, 3))


def _start_mlflow(cfg: DistillConfig, manifest: Manifest, extra: dict[str, Any]
                  ) -> tuple[str | None, str | None]:
    """The driver's MLflow run (params, tags, the teacher manifest): ``(run_id, uri)``."""
    if not cfg.mlflow:
        return None, None
    import mlflow

    from ..config import flat_params
    from ..tracking import setup_mlflow

    uri = setup_mlflow(cfg.experiment)
    with mlflow.start_run(run_name=cfg.run_name) as run:
        params = {k: str(v)[:500] for k, v in flat_params(cfg).items()}
        params.update({**extra, "teachers_in_data": ",".join(t.name for t in manifest.teachers)})
        mlflow.log_params(params)
        mlflow.set_tags({"mtdp.stage": "distill", "mtdp.run_name": cfg.run_name,
                         "mtdp.resumed": str(cfg.resume)})
        mlflow.log_dict(manifest.to_dict(), "teacher_manifest.json")
        return run.info.run_id, uri


def run_distill(cfg: DistillConfig) -> DistillResult:
    """Distil a student as configured; starts a local Ray if none is connected.

    Returns the final student directory (``OUTPUT/RUN_NAME/student``), final metrics and,
    when MLflow is on, the run id and registered model URI.
    """
    cfg.validate()
    manifest, _ = open_teacher_dataset(cfg.data, cfg.teachers or None)
    stats = TeacherStats.from_manifest(manifest, cfg.teachers or None, cfg.residue_teachers)
    parse_mode(cfg.selector, stats.names)
    n_train = int(manifest.split_counts.get("train", 0))
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{cfg.data}: {n_train} train proteins, fewer than one batch of "
                         f"{cfg.batch_size}; lower batch_size")
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    output = Path(cfg.output).resolve()
    storage = Path(cfg.storage_path).resolve() if cfg.storage_path else output / "ray"
    cfg = dataclasses.replace(cfg, run_name=_run_name(cfg, storage))
    run_dir = storage / cfg.run_name
    init_ray()
    run_id, uri = _start_mlflow(cfg, manifest, {"n_train": n_train, "total_steps": total_steps,
                                                "steps_per_epoch": steps_per_epoch})
    plan = WorkerPlan(
        cfg=dataclasses.asdict(cfg), steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        run_dir=str(run_dir), mlflow_run_id=run_id, mlflow_uri=uri,
        metadata={"run_name": cfg.run_name, "mlflow_run_id": run_id,
                  "teachers": {t.name: t.source for t in manifest.teachers
                               if t.name in stats.names},
                  "selector": cfg.selector, "kd_loss": cfg.kd_loss})
    result = _fit(cfg, stats, plan, storage)
    student_dir, step = _export_student(result, output / cfg.run_name / STUDENT_SUBDIR)
    out = DistillResult(cfg.run_name, str(student_dir), dict(result.metrics or {}), step,
                        run_id, history=read_history(run_dir))
    if cfg.mlflow:
        from ..tracking import log_student

        out.model_uri = log_student(student_dir, run_id=run_id,
                                    registered_name=cfg.register_as or None)
    return out


def _fit(cfg: DistillConfig, stats: TeacherStats, plan: WorkerPlan, storage: Path):
    """Build the Ray Train ``TorchTrainer`` for ``plan`` and run it; returns its result."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else \
        ray.cluster_resources().get("GPU", 0) >= 1
    cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
    cpus = worker_cpus(cfg, cluster_cpus)
    # A CPU worker's torch threads: its share of the whole cluster, not of its reservation —
    # the reservation leaves a CPU to Ray Data's reader, which is idle most of a step.
    plan.threads = 0 if use_gpu else max(1, int(cluster_cpus // cfg.num_workers))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar per epoch per worker is noise in job logs
    residue = list(stats.residues)
    train_ds = load_teacher_dataset(cfg.data, stats.names, split="train",
                                    residue_teachers=residue)
    val_ds = load_teacher_dataset(cfg.data, stats.names, split="validation",
                                  residue_teachers=residue, limit=cfg.eval_max_proteins)
    trainer = TorchTrainer(
        train_loop, train_loop_config=plan,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=cfg.run_name, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": train_ds, "validation": val_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.run_name} finished without a checkpoint")
    return result


def _export_student(result, student_dir: Path) -> tuple[Path, int]:
    """Copy the final checkpoint's student directory out of Ray's storage; returns it and
    the checkpoint's step."""
    with result.checkpoint.as_directory() as d:
        if student_dir.exists():
            shutil.rmtree(student_dir)
        shutil.copytree(Path(d) / STUDENT_SUBDIR, student_dir)
        step = json.loads((Path(d) / "metrics.json").read_text()).get("step")
    return student_dir, int(step or 0)
