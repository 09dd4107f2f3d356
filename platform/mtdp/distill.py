"""Multi-teacher distillation of the student on Ray Train (DDP), with the teacher selector.

Pipeline: a teacher dataset written by :mod:`mtdp.precompute` (contract in
:mod:`mtdp.teacher_data`) is read with Ray Data and streamed to each Ray Train worker
(``get_dataset_shard``); every step the student sees MLM-masked sequences and is trained on
``mlm_weight · MLM + kd_weight · KD`` where the per-sample KD is the mean, over the teachers the
selector (:mod:`mtdp.selector`) picked for that sample, of the loss between the teacher head's
output and the standardised teacher features (:mod:`mtdp.losses`). For ``residue_teachers``
(datasets precomputed with ``per_residue``) a teacher's loss also includes the mean per-residue
loss between a per-residue head on the student's hidden states and the teacher's standardised
per-residue states.

Checkpoints (student, heads, selector, optimisers, schedulers, step and data position) are
reported with ``ray.train.report`` every ``checkpoint_every`` steps and at each epoch end; with
``FailureConfig(max_failures)`` a crashed worker group restarts from the last one. Re-running
with ``--resume`` (same ``run_name`` and ``storage_path``) continues a stopped run, step count
included (Ray Train V2 hands the latest checkpoint back through ``ray.train.get_checkpoint``).

Rank 0 logs to MLflow; the driver logs the final student (self-describing directory), and
registers it as a pyfunc model (``mtdp-student`` by default) that ``mtdp embed --model
models:/mtdp-student/N`` can use.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .losses import KD_KINDS, kd_loss, kd_losses, mask_tokens, mlm_loss, standardise
from .selector import TeacherSelector, combine, parse_mode
from .student import StudentConfig, StudentModel
from .teacher_data import Manifest, data_files
from .tokenizer import ResidueTokenizer

STATE_FILE = "state.pt"
STUDENT_SUBDIR = "student"


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DistillConfig:
    """Everything a distillation run needs (YAML file and/or ``--flags``, see mtdp.config)."""

    data: str = field(default="", metadata=_h("teacher dataset directory (precompute output)"))
    teachers: list[str] = field(default_factory=list, metadata=_h(
        "teachers to distil (default: all in the dataset)"))
    output: str = field(default="runs/distill", metadata=_h(
        "directory for the final student and Ray checkpoints"))
    run_name: str = field(default="", metadata=_h(
        "run name (default: distill-<time>); reuse it with --resume to continue a run"))
    resume: bool = field(default=False, metadata=_h(
        "continue the run RUN_NAME (default: the newest run under OUTPUT) from its checkpoint"))
    storage_path: str = field(default="", metadata=_h(
        "Ray Train storage for checkpoints (default: OUTPUT/ray); shared storage on clusters"))
    preset: str = field(default="tiny", metadata=_h("student size: tiny, small or paper"))
    dropout: float | None = field(default=None, metadata=_h(
        "student dropout (default: the preset's)"))
    num_workers: int = field(default=1, metadata=_h("Ray Train workers (DDP ranks)"))
    use_gpu: bool | None = field(default=None, metadata=_h(
        "one GPU per worker (default: if the cluster has GPUs)"))
    cpus_per_worker: float = field(default=1.0, metadata=_h("CPUs reserved per worker"))
    epochs: int = field(default=1, metadata=_h("passes over the train split"))
    max_steps: int = field(default=0, metadata=_h(
        "stop after this many optimiser steps in total (0: epochs decide)"))
    batch_size: int = field(default=32, metadata=_h(
        "proteins per optimiser step over all workers (global batch)"))
    batch_tokens: int = field(default=0, metadata=_h(
        "max padded tokens per forward pass; bigger batches are split into gradient-"
        "accumulation micro-batches (0: no limit)"))
    lr: float = field(default=3e-4, metadata=_h("AdamW peak learning rate"))
    weight_decay: float = field(default=0.01, metadata=_h("AdamW weight decay"))
    warmup_ratio: float = field(default=0.1, metadata=_h("fraction of steps of linear warm-up"))
    schedule: str = field(default="linear", metadata=_h("decay after warm-up: linear or cosine"))
    grad_clip: float = field(default=1.0, metadata=_h("gradient-norm clipping (0: off)"))
    mlm_prob: float = field(default=0.15, metadata=_h("fraction of residues masked for MLM"))
    mlm_weight: float = field(default=1.0, metadata=_h("weight of the MLM loss"))
    kd_weight: float = field(default=1.0, metadata=_h("weight of the distillation loss"))
    kd_loss: str = field(default="kl", metadata=_h("distillation loss: kl, cosine or mse"))
    temperature: float = field(default=1.0, metadata=_h("softmax temperature of the KL loss"))
    residue_teachers: list[str] = field(default_factory=list, metadata=_h(
        "teachers whose per-residue states the student also matches, through a per-residue "
        "head on its hidden states ('all': every teacher the dataset has them for; needs "
        "precompute --per-residue)"))
    residue_weight: float = field(default=1.0, metadata=_h(
        "weight of a teacher's per-residue loss (kd_loss per residue, averaged over the "
        "protein) added to its per-protein distillation loss"))
    selector: str = field(default="rl", metadata=_h(
        "teacher selection: rl, uniform, single:<teacher>, random or none"))
    selector_lr: float = field(default=1e-3, metadata=_h("policy learning rate (Adam)"))
    selector_hidden: int = field(default=64, metadata=_h("policy MLP width"))
    selector_entropy: float = field(default=0.01, metadata=_h("entropy bonus weight"))
    selector_momentum: float = field(default=0.9, metadata=_h("reward baseline momentum"))
    selector_warmup_steps: int = field(default=20, metadata=_h(
        "steps using all teachers before the policy acts"))
    selector_init_prob: float = field(default=0.8, metadata=_h(
        "initial selection probability of every teacher"))
    reward_batch_size: int = field(default=32, metadata=_h(
        "held-out proteins on which the selector's reward is measured"))
    eval_every: int = field(default=0, metadata=_h(
        "evaluate on the validation split every N steps (0: at each epoch end)"))
    eval_max_proteins: int = field(default=512, metadata=_h("validation proteins used"))
    checkpoint_every: int = field(default=0, metadata=_h(
        "checkpoint every N steps (0: at each epoch end only)"))
    log_every: int = field(default=10, metadata=_h("log training metrics every N steps"))
    shuffle_buffer: int = field(default=256, metadata=_h(
        "rows in the local shuffle buffer of the train stream (0: file order)"))
    seed: int = field(default=0, metadata=_h("random seed"))
    max_failures: int = field(default=3, metadata=_h(
        "worker-group restarts from the last checkpoint before the run fails"))
    fail_at_step: int = field(default=0, metadata=_h(
        "TESTING: kill rank 0 once at this step to exercise fault tolerance (0: never)"))
    experiment: str = field(default="mtdp", metadata=_h("MLflow experiment"))
    register_as: str = field(default="mtdp-student", metadata=_h(
        "MLflow registered-model name for the final student ('' to skip)"))
    mlflow: bool = field(default=True, metadata=_h("track the run in MLflow"))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not self.data:
            raise ValueError("data: give the teacher dataset directory (--data)")
        if self.kd_loss not in KD_KINDS:
            raise ValueError(f"kd_loss must be one of {KD_KINDS}, got {self.kd_loss!r}")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be linear or cosine, got {self.schedule!r}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 (Ray Train V2), got {self.num_workers}")
        if self.batch_size < self.num_workers or self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must be a positive multiple of "
                             f"num_workers {self.num_workers} (the global batch is split evenly)")
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("give epochs >= 1 or max_steps >= 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.residue_weight < 0:
            raise ValueError(f"residue_weight must be >= 0, got {self.residue_weight}")


# ---- data -------------------------------------------------------------------------------
@dataclass
class TeacherStats:
    """Teacher names, columns and standardisation statistics from a manifest."""

    names: list[str]
    columns: list[str]
    dims: list[int]
    mean: list[torch.Tensor]
    std: list[torch.Tensor]
    #: Per-residue targets: teacher name → (column, mean, std), for the distilled ones only.
    residues: dict[str, tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: Manifest, teachers: list[str] | None = None,
                      residue_teachers: list[str] | None = None) -> "TeacherStats":
        names = teachers or [t.name for t in manifest.teachers]
        entries = [manifest.teacher(n) for n in names]
        for t in entries:
            if len(t.mean) != t.dim or len(t.std) != t.dim:
                raise ValueError(f"manifest teacher {t.name!r}: mean/std must have {t.dim} "
                                 f"values (found {len(t.mean)}/{len(t.std)}); rerun precompute")
        wanted = list(residue_teachers or [])
        if wanted == ["all"]:
            wanted = [t.name for t in entries if t.residue_column]
            if not wanted:
                raise ValueError("residue_teachers 'all': the dataset has no per-residue states "
                                 "(rerun precompute with --per-residue TEACHER)")
        residues = {}
        for name in wanted:
            if name not in names:
                raise ValueError(f"residue teacher {name!r} is not among the distilled teachers "
                                 f"{names}")
            t = manifest.teacher(name)
            if not t.residue_column or len(t.residue_mean) != t.dim:
                raise ValueError(f"the dataset has no per-residue states for teacher {name!r} "
                                 f"(rerun precompute with --per-residue {name})")
            residues[name] = (t.residue_column, torch.tensor(t.residue_mean, dtype=torch.float32),
                              torch.tensor(t.residue_std, dtype=torch.float32))
        return cls(names, [t.column for t in entries], [t.dim for t in entries],
                   [torch.tensor(t.mean, dtype=torch.float32) for t in entries],
                   [torch.tensor(t.std, dtype=torch.float32) for t in entries], residues)

    def to(self, device: torch.device | str) -> "TeacherStats":
        """Move the standardisation statistics to ``device`` (in place; returns self)."""
        self.mean = [m.to(device) for m in self.mean]
        self.std = [s.to(device) for s in self.std]
        self.residues = {k: (c, m.to(device), s.to(device))
                         for k, (c, m, s) in self.residues.items()}
        return self


def _as_matrix(col: Any, dim: int, name: str) -> np.ndarray:
    """A fixed-size-list column from Ray Data / pyarrow as a float32 ``[B, dim]`` array."""
    arr = np.asarray(col)
    if arr.dtype == object:
        arr = np.stack([np.asarray(x, dtype=np.float32) for x in arr])
    arr = arr.astype(np.float32, copy=False).reshape(len(arr), -1)
    if arr.shape[1] != dim:
        raise ValueError(f"teacher column {name!r} has {arr.shape[1]} features, manifest says "
                         f"{dim}")
    return arr


def _residue_targets(col: Any, lengths: list[int], width: int, dim: int, name: str,
                     mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-residue teacher states of a batch as standardised ``[B, width, dim]`` (zeros past
    each protein's residues)."""
    out = torch.zeros(len(lengths), width, dim, device=mean.device)
    for i, (x, n) in enumerate(zip(col, lengths)):
        a = np.asarray(x)
        if a.dtype == object:  # Ray Data hands nested lists over as arrays of arrays
            a = np.stack(list(a)) if len(a) else np.zeros((0, dim))
        a = a.astype(np.float32, copy=False).reshape(-1, dim)
        if len(a) != n:
            raise ValueError(f"column {name!r}: {len(a)} per-residue states for a protein of "
                             f"{n} residues")
        out[i, :n] = standardise(torch.from_numpy(a).to(mean.device), mean, std)
    return out


def make_batch(rows: dict[str, Any], stats: TeacherStats, *, mlm_prob: float, seed: int,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """Tensors for one batch of dataset rows (``id``, ``sequence``, teacher columns):
    tokens, MLM-masked tokens and labels (masks depend on ``(seed, id)`` only) and
    standardised teacher targets."""
    ids = [str(x) for x in rows["id"]]
    seqs = [str(s) for s in rows["sequence"]]
    tok = ResidueTokenizer()
    input_ids, attn = tok.batch_encode(seqs)
    masked, labels = mask_tokens(input_ids, mask_prob=mlm_prob, seed=seed, keys=ids)
    targets = {}
    for name, col, dim, mu, sd in zip(stats.names, stats.columns, stats.dims, stats.mean,
                                      stats.std):
        # Standardise where the statistics live (the training device in the Ray loop).
        raw = torch.from_numpy(_as_matrix(rows[col], dim, col)).to(mu.device)
        targets[name] = standardise(raw, mu, sd).to(device)
    lengths = [len(s) for s in seqs]
    res = {}
    for name, (col, mu, sd) in stats.residues.items():
        dim = stats.dims[stats.names.index(name)]
        res[name] = _residue_targets(rows[col], lengths, input_ids.shape[1], dim, col, mu,
                                     sd).to(device)
    return {"ids": ids, "input_ids": input_ids.to(device), "masked_ids": masked.to(device),
            "attention_mask": attn.to(device), "labels": labels.to(device),
            "lengths": torch.tensor(lengths, device=device),
            "targets": targets, "residue_targets": res}


def split_batch(batch: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    """Split a batch into micro-batches of at most ``max_tokens`` padded tokens (longest
    first; each re-padded to its own longest member). ``0`` keeps it whole."""
    n = len(batch["ids"])
    if max_tokens <= 0 or n * batch["input_ids"].shape[1] <= max_tokens:
        return [batch]
    from .embed import token_budget_batches

    groups = token_budget_batches(batch["lengths"].tolist(), max_tokens, overhead=1)
    out = []
    for g in groups:
        idx = torch.tensor(g, device=batch["input_ids"].device)
        width = int(batch["lengths"][idx].max()) + 1
        mb = {"ids": [batch["ids"][i] for i in g], "lengths": batch["lengths"][idx],
              "targets": {k: v[idx] for k, v in batch["targets"].items()},
              "residue_targets": {k: v[idx, :width] for k, v in
                                  batch.get("residue_targets", {}).items()}}
        for key in ("input_ids", "masked_ids", "attention_mask", "labels"):
            mb[key] = batch[key][idx, :width]
        out.append(mb)
    return out


# ---- the training core (also used without Ray, e.g. in tests) -----------------------------
def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str):
    """Multiplier for ``LambdaLR``: linear warm-up, then linear or cosine decay to 0."""
    warm = max(1, int(round(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 1.0 - frac if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return f


class Distiller:
    """One student + selector + optimiser; :meth:`train_step` on batches from
    :func:`make_batch`. ``model`` may be DDP-wrapped (gradients are then averaged across
    ranks; the reward and evaluation use the underlying module)."""

    def __init__(self, model: torch.nn.Module, selector: TeacherSelector, cfg: DistillConfig,
                 total_steps: int, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.student: StudentModel = getattr(model, "module", model)
        self.selector = selector
        self.cfg = cfg
        self.device = torch.device(device)
        self.teachers = list(selector.teachers)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total_steps, cfg.warmup_ratio, cfg.schedule))
        self.step = 0
        self.reward_batch: dict[str, Any] | None = None
        self._reward_before: torch.Tensor | None = None

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def forward(self, batch: dict[str, Any], model: torch.nn.Module | None = None
                ) -> dict[str, torch.Tensor]:
        """Per-sample MLM ``[B]``, KD ``[B, K]`` and the pooled embedding of one batch."""
        from .tokenizer import residue_mask

        model = model or self.model
        with self._autocast():
            # Pool over the real residues of the *unmasked* input (mask tokens are residues).
            out = model(batch["masked_ids"], batch["attention_mask"],
                        pool_mask=residue_mask(batch["input_ids"]))
            # Heads run outside the DDP forward; their gradients are still all-reduced.
            heads = {k: self.student.teacher_heads[k](out["embedding"]) for k in self.teachers}
            res_targets = batch.get("residue_targets") or {}
            res_preds = {k: self.student.residue_heads[k](out["hidden"]) for k in res_targets}
        mlm = mlm_loss(out["mlm_logits"], batch["labels"])
        kd = kd_losses(heads, {k: batch["targets"][k] for k in self.teachers},
                       kind=self.cfg.kd_loss, temperature=self.cfg.temperature)
        if res_targets:
            # A teacher's per-residue loss joins its per-protein one, so the selector's choice
            # and reward cover both.
            rmask = residue_mask(batch["input_ids"]).float()
            extra = torch.zeros_like(kd)
            for k, name in enumerate(self.teachers):
                if name in res_targets:
                    pred, tgt = res_preds[name], res_targets[name]
                    per_pos = kd_loss(pred.reshape(-1, pred.shape[-1]),
                                      tgt.reshape(-1, tgt.shape[-1]), kind=self.cfg.kd_loss,
                                      temperature=self.cfg.temperature).view(rmask.shape)
                    extra[:, k] = (per_pos * rmask).sum(1) / rmask.sum(1).clamp_min(1.0)
            kd = kd + self.cfg.residue_weight * extra
        return {"mlm": mlm, "kd": kd, "pooled": out["pooled"]}

    @torch.no_grad()
    def reward_losses(self) -> torch.Tensor:
        """Held-out KD loss per teacher on the fixed reward batch ``[K]`` (eval mode)."""
        assert self.reward_batch is not None
        was = self.student.training
        self.student.eval()
        res = self.forward(self.reward_batch, model=self.student)
        self.student.train(was)
        return res["kd"].float().mean(0)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimiser step (micro-batched by ``batch_tokens``); returns metrics."""
        cfg = self.cfg
        self.model.train()
        rl = self.selector.kind == "rl" and self.reward_batch is not None
        if rl and self._reward_before is None:
            self._reward_before = self.reward_losses()
        micro = split_batch(batch, cfg.batch_tokens)
        n = len(batch["ids"])
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"mlm": 0.0, "kd": 0.0, "loss": 0.0}
        kd_each = torch.zeros(len(self.teachers))
        for j, mb in enumerate(micro):
            res = self.forward(mb)
            sel = self.selector.select(res["pooled"], res["kd"], mb["lengths"])
            kd_sample = combine(res["kd"], sel)
            per_sample = cfg.mlm_weight * res["mlm"] + cfg.kd_weight * kd_sample
            # Sum of per-sample losses / global-per-rank batch: micro-batching changes nothing.
            loss = per_sample.sum() / n
            sync = j == len(micro) - 1 or not hasattr(self.model, "no_sync")
            if sync:
                loss.backward()
            else:
                with self.model.no_sync():
                    loss.backward()
            sums["mlm"] += float(res["mlm"].detach().sum())
            sums["kd"] += float(kd_sample.detach().sum())
            sums["loss"] += float(per_sample.detach().sum())
            kd_each += res["kd"].detach().float().sum(0).cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        metrics = {f"train/{k}": v / n for k, v in sums.items()}
        metrics.update({f"train/kd_{t}": float(kd_each[i]) / n
                        for i, t in enumerate(self.teachers)})
        metrics["train/grad_norm"] = float(grad_norm)
        metrics["train/lr"] = self.scheduler.get_last_lr()[0]
        if rl:
            after = self.reward_losses()
            metrics.update(self.selector.update(self.selector.rewards(self._reward_before,
                                                                      after)))
            self._reward_before = after
        else:
            self.selector.update(torch.zeros(len(self.teachers)))
        return metrics

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Held-out MLM, each teacher's KD (all teachers, whatever the selector mode) and
        ``total = mlm_weight·MLM + kd_weight·mean_k KD_k`` over ``batches``."""
        was = self.student.training
        self.student.eval()
        n, mlm, kd = 0, 0.0, torch.zeros(len(self.teachers))
        for b in batches:
            res = self.forward(b, model=self.student)
            n += len(b["ids"])
            mlm += float(res["mlm"].sum())
            kd += res["kd"].float().sum(0).cpu()
        self.student.train(was)
        if n == 0:
            raise ValueError("no validation proteins to evaluate on")
        out = {"eval/mlm": mlm / n}
        out.update({f"eval/kd_{t}": float(kd[i]) / n for i, t in enumerate(self.teachers)})
        out["eval/kd_mean"] = float(kd.mean()) / n
        out["eval/total"] = self.cfg.mlm_weight * out["eval/mlm"] \
            + self.cfg.kd_weight * out["eval/kd_mean"]
        return out

    # persistence
    def state(self, **extra: Any) -> dict[str, Any]:
        """Everything to resume training (student weights saved separately as a directory)."""
        return {"model": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "selector": self.selector.full_state(), "step": self.step,
                "torch_rng": torch.get_rng_state(), **extra}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.selector.load_full_state(state["selector"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location may have moved it


def build_student(cfg: DistillConfig, stats: TeacherStats, max_len: int,
                  metadata: dict[str, Any] | None = None) -> StudentModel:
    """The student for a run: ``preset`` architecture with one head per teacher."""
    dims = dict(zip(stats.names, stats.dims))
    overrides: dict[str, Any] = {"teachers": dims, "max_len": max_len,
                                 "residue_teachers": {k: dims[k] for k in stats.residues},
                                 "metadata": metadata or {}}
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    torch.manual_seed(cfg.seed)
    return StudentModel(StudentConfig.preset(cfg.preset, **overrides))


def build_selector(cfg: DistillConfig, stats: TeacherStats, state_dim: int, rank: int = 0
                   ) -> TeacherSelector:
    """The teacher selector configured by ``cfg`` (per-rank action RNG, shared policy init)."""
    sel = TeacherSelector(stats.names, state_dim, mode=cfg.selector, hidden=cfg.selector_hidden,
                          lr=cfg.selector_lr, entropy_weight=cfg.selector_entropy,
                          baseline_momentum=cfg.selector_momentum,
                          warmup_steps=cfg.selector_warmup_steps,
                          init_prob=cfg.selector_init_prob, seed=cfg.seed)
    sel.generator.manual_seed(cfg.seed * 1000 + rank + 1)
    return sel


# ---- Ray Train worker --------------------------------------------------------------------
def _batches_from_rows(it: Iterator[dict[str, Any]], stats: TeacherStats, cfg: DistillConfig,
                       seed: int, device: torch.device) -> Iterator[dict[str, Any]]:
    for rows in it:
        yield make_batch(rows, stats, mlm_prob=cfg.mlm_prob, seed=seed, device=device)


def _train_loop(loop: dict[str, Any]) -> None:
    """Ray Train worker function (runs on every rank)."""
    import ray.train
    import ray.train.torch

    cfg = DistillConfig(**loop["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    manifest = Manifest.load(cfg.data)
    stats = TeacherStats.from_manifest(manifest, cfg.teachers or None,
                                       cfg.residue_teachers).to(device)
    student = build_student(cfg, stats, manifest.max_len, loop.get("metadata"))
    model = ray.train.torch.prepare_model(student)
    selector = build_selector(cfg, stats, student.config.d_model, rank).to(device)
    steps_per_epoch, total_steps = loop["steps_per_epoch"], loop["total_steps"]
    dist = Distiller(model, selector, cfg, total_steps, device)
    per_rank = cfg.batch_size // world

    start_epoch, skip, resumed_from = 0, 0, -1
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=False)
        dist.load_state(state)
        start_epoch, skip = int(state["epoch"]), int(state["batch_in_epoch"])
        resumed_from = dist.step
        # A later --resume may raise max_steps / epochs: re-point the schedule at the new total.
        dist.scheduler.lr_lambdas[0] = lr_lambda(total_steps, cfg.warmup_ratio, cfg.schedule)
        print(f"[rank {rank}] resumed from checkpoint at step {dist.step} "
              f"(epoch {start_epoch}, batch {skip})")

    val_rows = list(ray.train.get_dataset_shard("validation").iter_batches(
        batch_size=64, batch_format="numpy"))
    val_batches = [make_batch(r, stats, mlm_prob=cfg.mlm_prob, seed=cfg.seed, device=device)
                   for r in val_rows]
    if cfg.selector == "rl" and val_rows:
        first = {k: v[:cfg.reward_batch_size] for k, v in val_rows[0].items()}
        dist.reward_batch = make_batch(first, stats, mlm_prob=cfg.mlm_prob, seed=cfg.seed + 7,
                                       device=device)

    fail_marker = Path(loop["run_dir"]) / ".injected_failure_done"
    mlflow_run = _mlflow_attach(loop) if rank == 0 else None
    train_shard = ray.train.get_dataset_shard("train")
    done = dist.step >= total_steps
    t0, seen, tokens = time.time(), 0, 0

    def report(epoch: int, batch_in_epoch: int, metrics: dict[str, float],
               checkpoint: bool) -> None:
        metrics = {**metrics, "step": dist.step, "epoch": epoch,
                   "resumed_from_step": resumed_from}
        if rank == 0 and mlflow_run is not None:
            mlflow_run.log_metrics({k: v for k, v in metrics.items()
                                    if isinstance(v, (int, float))}, step=dist.step)
        if not checkpoint:
            return
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                torch.save(dist.state(epoch=epoch, batch_in_epoch=batch_in_epoch),
                           Path(tmp) / STATE_FILE)
                student.save(Path(tmp) / STUDENT_SUBDIR)
                (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp)
                             if rank == 0 else None)

    epoch = start_epoch
    while not done:  # total_steps (epochs × steps_per_epoch, or max_steps) decides the end
        if done:
            break
        it = train_shard.iter_batches(
            batch_size=per_rank, batch_format="numpy", drop_last=True,
            local_shuffle_buffer_size=cfg.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed + epoch if cfg.shuffle_buffer else None)
        b = -1
        for b, rows in enumerate(it):
            if b >= steps_per_epoch:
                break
            if b < skip:  # resumed mid-epoch: these batches were already trained on
                continue
            if cfg.fail_at_step and dist.step == cfg.fail_at_step and rank == 0 \
                    and not fail_marker.exists():
                fail_marker.write_text("1")
                # Let the controller register the last reported checkpoint first (it polls
                # workers every ~2 s); a crash right after a report could otherwise lose it.
                time.sleep(5)
                print(f"[rank 0] injected failure at step {dist.step}: killing this worker")
                os.kill(os.getpid(), signal.SIGKILL)
            batch = make_batch(rows, stats, mlm_prob=cfg.mlm_prob, seed=cfg.seed * 7919 + epoch,
                               device=device)
            metrics = dist.train_step(batch)
            seen += len(batch["ids"]) * world
            tokens += int(batch["attention_mask"].sum()) * world
            done = dist.step >= total_steps
            last_in_epoch = b + 1 >= steps_per_epoch
            evaluate = done or last_in_epoch or (cfg.eval_every and
                                                 dist.step % cfg.eval_every == 0)
            ckpt_now = done or last_in_epoch or (cfg.checkpoint_every and
                                                 dist.step % cfg.checkpoint_every == 0)
            if dist.step % cfg.log_every == 0 or evaluate or ckpt_now:
                el = max(time.time() - t0, 1e-9)
                metrics["perf/proteins_per_s"] = seen / el
                metrics["perf/tokens_per_s"] = tokens / el
                metrics.update({f"selector/rate_{k}": v for k, v in
                                dist.selector.rates().items()})
                if evaluate:
                    metrics.update(dist.evaluate(val_batches))
                pos_epoch, pos_batch = (epoch + 1, 0) if last_in_epoch else (epoch, b + 1)
                report(pos_epoch, pos_batch, metrics, checkpoint=bool(ckpt_now))
            if done:
                break
        skip = 0
        if b < 0:
            raise RuntimeError(f"rank {rank}: the train split gave no batch of {per_rank} "
                               "proteins; lower batch_size or add data")
        epoch += 1
    if mlflow_run is not None:
        mlflow_run.close()


class _MlflowLogger:
    """Rank-0 metric logging into the driver's MLflow run (re-attached after restarts)."""

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri=uri), run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()])

    def close(self) -> None:
        pass


def _mlflow_attach(loop: dict[str, Any]) -> _MlflowLogger | None:
    if not loop.get("mlflow_run_id"):
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return _MlflowLogger(loop["mlflow_uri"], loop["mlflow_run_id"])


# ---- driver ------------------------------------------------------------------------------
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


def _count_rows(files: list[str], split: str) -> int:
    import pyarrow.parquet as pq

    n = 0
    for f in files:
        col = pq.read_table(f, columns=["split"]).column("split")
        n += sum(1 for v in col.to_pylist() if v == split)
    return n


def _newest_run(storage: Path) -> str:
    runs = [p for p in storage.iterdir() if p.is_dir() and any(p.glob("checkpoint_*"))] \
        if storage.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"--resume: no run with checkpoints under {storage}")
    return max(runs, key=lambda p: p.stat().st_mtime).name


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    """Metrics of every checkpoint of a run, in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    # Directory names sort by time: a step re-reported after a restart keeps its newest.
    for m in sorted(run_dir.glob("checkpoint_*/metrics.json")):
        d = json.loads(m.read_text())
        by_step[int(d.get("step", 0))] = d
    return [by_step[k] for k in sorted(by_step)]


def run_distill(cfg: DistillConfig) -> DistillResult:
    """Distil a student as configured; starts a local Ray if none is connected.

    Returns the final student directory (``OUTPUT/RUN_NAME/student``), final metrics and,
    when MLflow is on, the run id and registered model URI.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg.validate()
    manifest = Manifest.load(cfg.data)
    stats = TeacherStats.from_manifest(manifest, cfg.teachers or None, cfg.residue_teachers)
    parse_mode(cfg.selector, stats.names)
    files = data_files(cfg.data)
    if not files:
        raise FileNotFoundError(f"{cfg.data}: no Parquet files under data/")
    n_train = _count_rows(files, "train")
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{cfg.data}: {n_train} train proteins, fewer than one batch of "
                         f"{cfg.batch_size}; lower batch_size")
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs

    output = Path(cfg.output).resolve()
    storage = Path(cfg.storage_path).resolve() if cfg.storage_path else output / "ray"
    if cfg.resume:
        run_name = cfg.run_name or _newest_run(storage)
        if not (storage / run_name).is_dir():
            raise FileNotFoundError(f"--resume: no run {run_name!r} under {storage}")
    else:
        run_name = cfg.run_name or time.strftime("distill-%Y%m%d-%H%M%S")
        if (storage / run_name).exists():
            raise ValueError(f"run {run_name!r} already exists under {storage}: pass --resume "
                             "to continue it, or choose another --run-name")
    cfg = dataclasses.replace(cfg, run_name=run_name)
    run_dir = storage / run_name

    if not ray.is_initialized():
        # $RAY_ADDRESS (set by `ray job submit`) names the cluster; otherwise start a local
        # one rather than attaching to whatever Ray happens to run on this host.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local",
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get(
                     "HF_HUB_OFFLINE", "1")}})
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else \
        ray.cluster_resources().get("GPU", 0) >= 1
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar per epoch per worker is noise in job logs
    cols = ["id", "sequence", "split", *stats.columns,
            *(col for col, _, _ in stats.residues.values())]
    ds = ray.data.read_parquet(files, columns=cols)
    train_ds = ds.filter(expr="split == 'train'")
    val_ds = ds.filter(expr="split == 'validation'").limit(cfg.eval_max_proteins)

    run_id, uri = None, None
    if cfg.mlflow:
        from .config import flat_params
        from .tracking import setup_mlflow
        import mlflow

        uri = setup_mlflow(cfg.experiment)
        with mlflow.start_run(run_name=run_name) as run:
            run_id = run.info.run_id
            params = {k: str(v)[:500] for k, v in flat_params(cfg).items()}
            params.update({"n_train": n_train, "steps_per_epoch": steps_per_epoch,
                           "total_steps": total_steps, "teachers_in_data": ",".join(
                               t.name for t in manifest.teachers)})
            mlflow.log_params(params)
            mlflow.set_tags({"mtdp.stage": "distill", "mtdp.run_name": run_name,
                             "mtdp.resumed": str(cfg.resume)})
            mlflow.log_dict(manifest.to_dict(), "teacher_manifest.json")

    loop = {"cfg": dataclasses.asdict(cfg), "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "run_dir": str(run_dir), "mlflow_run_id": run_id,
            "mlflow_uri": uri,
            "metadata": {"run_name": run_name, "mlflow_run_id": run_id,
                         "teachers": {t.name: t.source for t in manifest.teachers
                                      if t.name in stats.names},
                         "selector": cfg.selector, "kd_loss": cfg.kd_loss}}
    trainer = TorchTrainer(
        _train_loop, train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets={"train": train_ds, "validation": val_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name} finished without a checkpoint")
    student_dir = output / run_name / STUDENT_SUBDIR
    with result.checkpoint.as_directory() as d:
        if student_dir.exists():
            shutil.rmtree(student_dir)
        shutil.copytree(Path(d) / STUDENT_SUBDIR, student_dir)
        state_step = json.loads((Path(d) / "metrics.json").read_text()).get("step")
    history = _read_history(run_dir)
    out = DistillResult(run_name, str(student_dir), dict(result.metrics or {}),
                        int(state_step or 0), run_id, history=history)
    if cfg.mlflow:
        from .tracking import log_student

        out.model_uri = log_student(student_dir, run_id=run_id,
                                    registered_name=cfg.register_as or None)
    return out
