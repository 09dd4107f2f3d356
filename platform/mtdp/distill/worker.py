"""The Ray Train worker: plain PyTorch training of a :class:`~.core.Distiller` plus three Ray
calls — ``get_dataset_shard`` (the rank's stream of rows), ``get_checkpoint`` (resume) and
``report`` (metrics and checkpoints).

Checkpoints hold the student, heads, selector, optimisers, schedulers, step and data position
(``state.pt``, loaded with ``weights_only=True``: nothing but tensors and plain values, so a
checkpoint folder cannot run code in the workers that read it) and the student directory.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..residue_windows import window_count
from ..runtime import apply_env_defaults
from ..teacher_data import Manifest
from .batches import TeacherStats, make_batch, residue_array
from .config import DistillConfig
from .core import Distiller, build_selector, build_student, lr_lambda

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
STUDENT_SUBDIR = "student"
FAIL_MARKER = ".injected_failure_done"


@dataclass
class WorkerPlan:
    """What the driver hands every worker (``train_loop_config``)."""

    cfg: dict[str, Any]
    steps_per_epoch: int
    total_steps: int
    run_dir: str
    mlflow_run_id: str | None = None
    mlflow_uri: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: torch CPU threads of a worker (its CPU reservation, rounded; 0: torch's choice).
    threads: int = 0


class MlflowLogger:
    """Rank-0 metric logging into the driver's MLflow run (re-attached after restarts)."""

    def __init__(self, uri: str, run_id: str) -> None:
        apply_env_defaults()
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri=uri), run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()])


def progress_line(step: int, total: int, metrics: dict[str, float], steps_now: int,
                  elapsed: float) -> str:
    """``[distill] step 12/36 (33%) · loss 3.416 · 31.2 proteins/s · ETA 0:00:25`` (the ETA
    from this run's pace; ``eval/total`` appended when the step evaluated)."""
    left = (total - step) * elapsed / steps_now if steps_now > 0 else float("nan")
    eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left == left else "?"
    line = (f"[distill] step {step}/{total} ({100 * step / max(total, 1):.0f}%) · loss "
            f"{metrics.get('train/loss', float('nan')):.3f} · "
            f"{metrics.get('perf/proteins_per_s', 0.0):.1f} proteins/s · ETA {eta}")
    if "eval/total" in metrics:
        line += f" · held-out loss {metrics['eval/total']:.3f}"
    return line


def train_megabytes(manifest: Manifest, stats: TeacherStats, world: int) -> float:
    """A rank's share of the train rows in memory, estimated: every protein at the dataset's
    length limit, vectors and per-residue targets as float16, plus half again for Python
    objects and the load's own copies."""
    dims = dict(zip(stats.names, stats.dims))
    per = sum(stats.dims) + sum(window_count(manifest.max_len, r.window) * dims[name]
                                for name, r in stats.residues.items())
    rows = int(manifest.split_counts.get("train", 0)) / world
    return 1.5 * rows * (2 * per + manifest.max_len + 64) / 2 ** 20


def load_state(path: Path, device) -> dict[str, Any]:
    """A checkpoint's training state, loaded with ``weights_only=True``: tensors and plain
    values only — a file that would need to unpickle anything else (and so could run code) is
    refused with ``pickle.UnpicklingError``."""
    return torch.load(path, map_location=device, weights_only=True)


def train_loop(plan: WorkerPlan) -> None:
    """Ray Train worker function (runs on every rank)."""
    _Worker(plan).run()


class _Worker:
    def __init__(self, plan: WorkerPlan) -> None:
        import ray.train
        import ray.train.torch

        self.plan = plan
        self.cfg = cfg = DistillConfig(**plan.cfg)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = device = ray.train.torch.get_device()
        if device.type == "cpu" and plan.threads:
            torch.set_num_threads(plan.threads)  # Ray's default is one per whole CPU
        manifest = Manifest.load(cfg.data)
        self.stats = TeacherStats.from_manifest(manifest, cfg.teachers or None,
                                                cfg.residue_teachers).to(device)
        self.student = build_student(cfg, self.stats, manifest.max_len, plan.metadata)
        model = ray.train.torch.prepare_model(self.student)
        selector = build_selector(cfg, self.stats, self.student.config.d_model,
                                  self.rank).to(device)
        self.dist = Distiller(model, selector, cfg, plan.total_steps, device)
        self.start_epoch, self.skip, self.resumed_from = 0, 0, -1
        self.mlflow = MlflowLogger(plan.mlflow_uri, plan.mlflow_run_id) \
            if self.rank == 0 and plan.mlflow_run_id else None
        self.seen = self.tokens = 0
        self.rows: dict[str, np.ndarray] | None = None  # the train shard, when held in memory
        self.t0 = time.time()

    def restore(self) -> None:
        """Continue from the latest checkpoint, if Ray Train hands one back."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            state = load_state(Path(d) / STATE_FILE, self.device)
        dist, cfg = self.dist, self.cfg
        dist.load_state(state)
        self.start_epoch, self.skip = int(state["epoch"]), int(state["batch_in_epoch"])
        self.resumed_from = dist.step
        # A later --resume may raise max_steps / epochs: re-point the schedule at the new total.
        dist.scheduler.lr_lambdas[0] = lr_lambda(self.plan.total_steps, cfg.warmup_ratio,
                                                 cfg.schedule)
        print(f"[rank {self.rank}] resumed from checkpoint at step {dist.step} "
              f"(epoch {self.start_epoch}, batch {self.skip})")

    def validation(self) -> list[dict[str, Any]]:
        """Validation batches (and, for the RL selector, the fixed reward batch or the
        held-out batches of the contrast credit)."""
        import ray.train

        cfg = self.cfg
        rows = list(ray.train.get_dataset_shard("validation").iter_batches(
            batch_size=64, batch_format="numpy"))
        if cfg.selector == "rl" and rows:
            first = {k: v[:cfg.reward_batch_size] for k, v in rows[0].items()}
            self.dist.reward_batch = make_batch(first, self.stats, mlm_prob=cfg.mlm_prob,
                                                seed=cfg.seed + 7, device=self.device)
        if cfg.selector == "rl" and cfg.selector_reward == "contrast" \
                and cfg.selector_credit == "heldout":
            size = cfg.reward_batch_size
            self.dist.credit_batches = [
                make_batch({k: v[i:i + size] for k, v in r.items()}, self.stats,
                           mlm_prob=cfg.mlm_prob, seed=cfg.seed + 7, device=self.device)
                for r in rows for i in range(0, len(r["id"]), size)]
        return [make_batch(r, self.stats, mlm_prob=cfg.mlm_prob, seed=cfg.seed,
                           device=self.device) for r in rows]

    def report(self, epoch: int, batch_in_epoch: int, metrics: dict[str, float],
               checkpoint: bool) -> None:
        """Metrics to MLflow (rank 0) and, with ``checkpoint``, a checkpoint to Ray Train."""
        import ray.train

        metrics = {**metrics, "step": self.dist.step, "epoch": epoch,
                   "resumed_from_step": self.resumed_from}
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: v for k, v in metrics.items()
                                     if isinstance(v, (int, float))}, step=self.dist.step)
        if not checkpoint:
            return
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                torch.save(self.dist.state(epoch=epoch, batch_in_epoch=batch_in_epoch),
                           Path(tmp) / STATE_FILE)
                self.student.save(Path(tmp) / STUDENT_SUBDIR)
                (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp)
                             if self.rank == 0 else None)

    def epoch_rows(self, epoch: int) -> Iterator[dict[str, Any]]:
        """This rank's batches of rows for ``epoch``: from memory in a seeded order of the
        epoch, else streamed."""
        import ray.train

        cfg, size = self.cfg, self.cfg.batch_size // self.world
        if self.rows is not None:  # shuffled whole, or in file order (shuffle_buffer 0)
            n = len(self.rows["id"])
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n) \
                if cfg.shuffle_buffer else np.arange(n)
            return ({k: v[order[i:i + size]] for k, v in self.rows.items()}
                    for i in range(0, n - size + 1, size))
        return ray.train.get_dataset_shard("train").iter_batches(
            batch_size=size, batch_format="numpy", drop_last=True,
            local_shuffle_buffer_size=cfg.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed + epoch if cfg.shuffle_buffer else None)

    def load_rows(self, manifest: Manifest) -> dict[str, np.ndarray] | None:
        """The rank's whole train shard in memory when :func:`train_megabytes` says it fits
        ``train_memory_mb`` (one Ray Data pass; streaming it every epoch cost small runs
        about a third of their speed), sorted by id (Ray Data's delivery order is not fixed:
        sorted, a resumed one-worker epoch skips exactly the batches it trained on), each
        protein's per-residue targets one array; else None."""
        import ray.train

        cfg = self.cfg
        if train_megabytes(manifest, self.stats, self.world) > cfg.train_memory_mb:
            return None
        dims = dict(zip(self.stats.names, self.stats.dims))
        columns = {r.column: dims[name] for name, r in self.stats.residues.items()}
        rows: dict[str, list] = {}
        for part in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=1024, batch_format="numpy"):
            for k, v in part.items():
                if k in columns:  # arrays of per-window arrays -> one [windows, dim] each
                    v = [residue_array(x, columns[k]) for x in v]
                rows.setdefault(k, []).append(v)
        if not rows:
            return None
        out = {}
        for k, parts in rows.items():
            if k in columns:
                col = np.empty(sum(len(p) for p in parts), dtype=object)
                col[:] = [a for p in parts for a in p]
            else:
                col = np.concatenate(parts)
            out[k] = col
        order = np.argsort(out["id"], kind="stable")
        return {k: v[order] for k, v in out.items()}

    def run(self) -> None:
        self.restore()
        self.rows = self.load_rows(Manifest.load(self.cfg.data))
        val_batches = self.validation()
        epoch = self.start_epoch
        while self.dist.step < self.plan.total_steps:  # epochs × steps_per_epoch, or max_steps
            trained = self.train_epoch(epoch, val_batches)
            if trained < 0:
                raise RuntimeError(f"rank {self.rank}: the train split gave no batch of "
                                   f"{self.cfg.batch_size // self.world} proteins; lower "
                                   "batch_size or add data")
            self.skip = 0
            epoch += 1

    def train_epoch(self, epoch: int, val_batches: list[dict[str, Any]]) -> int:
        """One pass over this rank's train stream; returns the last batch index (-1: none)."""
        cfg, dist, per_epoch = self.cfg, self.dist, self.plan.steps_per_epoch
        b = -1
        for b, rows in enumerate(self.epoch_rows(epoch)):
            if b >= per_epoch:
                break
            if b < self.skip:  # resumed mid-epoch: these batches were already trained on
                continue
            self.maybe_fail()
            batch = make_batch(rows, self.stats, mlm_prob=cfg.mlm_prob,
                               seed=cfg.seed * 7919 + epoch, device=self.device)
            metrics = dist.train_step(batch)
            self.seen += len(batch["ids"]) * self.world
            self.tokens += int(batch["attention_mask"].sum()) * self.world
            done = dist.step >= self.plan.total_steps
            last = b + 1 >= per_epoch
            evaluate = done or last or (cfg.eval_every and dist.step % cfg.eval_every == 0)
            ckpt = done or last or (cfg.checkpoint_every and
                                    dist.step % cfg.checkpoint_every == 0)
            if dist.step % cfg.log_every == 0 or evaluate or ckpt:
                el = max(time.time() - self.t0, 1e-9)
                metrics["perf/proteins_per_s"] = self.seen / el
                metrics["perf/tokens_per_s"] = self.tokens / el
                metrics.update({f"selector/rate_{k}": v for k, v in
                                dist.selector.rates().items()})
                if evaluate:
                    metrics.update(dist.evaluate(val_batches))
                if self.rank == 0:
                    log.info(progress_line(dist.step, self.plan.total_steps, metrics,
                                           dist.step - max(self.resumed_from, 0), el))
                position = (epoch + 1, 0) if last else (epoch, b + 1)
                self.report(*position, metrics, checkpoint=bool(ckpt))
            if done:
                break
        return b

    def maybe_fail(self) -> None:
        """TESTING (``fail_at_step``): kill rank 0 once, to exercise fault tolerance."""
        cfg, marker = self.cfg, Path(self.plan.run_dir) / FAIL_MARKER
        if cfg.fail_at_step and self.dist.step == cfg.fail_at_step and self.rank == 0 \
                and not marker.exists():
            marker.write_text("1")
            # Let the controller register the last reported checkpoint first (it polls
            # workers every ~2 s); a crash right after a report could otherwise lose it.
            time.sleep(5)
            print(f"[rank 0] injected failure at step {self.dist.step}: killing this worker")
            os.kill(os.getpid(), signal.SIGKILL)
