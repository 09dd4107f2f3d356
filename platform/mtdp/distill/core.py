"""The training core, independent of Ray: :class:`Distiller` (student + selector + optimiser,
one :meth:`~Distiller.train_step` per batch of :func:`mtdp.distill.batches.make_batch`) and
the builders of a run's student and selector. Ray Train (:mod:`.ray_job`) and the in-process
loop (:mod:`.local`) both drive it."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from ..losses import kd_loss, kd_losses, mlm_loss
from ..models.student import StudentConfig, StudentModel
from ..precision import autocast
from ..residue_windows import pool_windows
from ..selector import TeacherSelector, combine
from ..tokenizer import residue_mask
from .batches import TeacherStats, split_batch
from .config import DistillConfig


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
        if self.device.type == "cpu":
            # Denormal floats in small weights and grads slowed CPU training steps ~3x within
            # minutes; flushing them to zero changes nothing measurable.
            torch.set_flush_denormal(True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total_steps, cfg.warmup_ratio, cfg.schedule))
        self.step = 0
        self.reward_batch: dict[str, Any] | None = None
        #: Held-out batches the contrast credit is measured on in turn (selector_credit heldout).
        self.credit_batches: list[dict[str, Any]] = []
        self._credit_turn = 0
        self._reward_before: torch.Tensor | None = None

    def _autocast(self):
        return autocast(self.cfg.precision, self.device)

    def forward(self, batch: dict[str, Any], model: torch.nn.Module | None = None
                ) -> dict[str, torch.Tensor]:
        """Per-sample MLM ``[B]``, KD ``[B, K]`` and the pooled embedding of one batch."""
        model = model or self.model
        cfg = self.cfg
        clean = cfg.kd_input == "clean"
        # Pool over the real residues of the *unmasked* input (mask tokens are residues).
        rmask = residue_mask(batch["input_ids"])
        with self._autocast():
            out = model(batch["input_ids"] if clean else batch["masked_ids"],
                        batch["attention_mask"], pool_mask=rmask)
            logits = out["mlm_logits"]
            if clean and cfg.mlm_weight > 0:  # MLM needs the masked input: a second pass
                logits = model(batch["masked_ids"], batch["attention_mask"],
                               pool_mask=rmask)["mlm_logits"]
            # Heads run outside the DDP forward; their gradients are still all-reduced.
            heads = {k: self._protein_head(k, out["embedding"], batch) for k in self.teachers}
        mlm = mlm_loss(logits, batch["labels"]) if cfg.mlm_weight > 0 or not clean \
            else torch.zeros(len(batch["ids"]), device=logits.device)
        kd = kd_losses(heads, {k: batch["targets"][k] for k in self.teachers},
                       kind=cfg.kd_loss, temperature=cfg.temperature)
        res_targets = batch.get("residue_targets") or {}
        if res_targets:
            # A teacher's per-residue loss joins its per-protein one, so the selector's choice
            # and reward cover both.
            extra = torch.zeros_like(kd)
            windows = batch.get("residue_windows") or {}
            for k, name in enumerate(self.teachers):
                if name in res_targets:
                    extra[:, k] = self._residue_loss(out["hidden"], rmask, name,
                                                     res_targets[name], windows.get(name, 1),
                                                     self._shared(name, batch))
            kd = kd + cfg.residue_weight * extra
        return {"mlm": mlm, "kd": kd, "pooled": out["pooled"], "heads": heads,
                "embedding": out["embedding"]}

    def _shared(self, name: str, batch: dict[str, Any]) -> bool:
        """True when teacher ``name``'s per-residue and per-protein predictions are one map
        (``residue_head = shared``, and the batch has its per-residue targets)."""
        return self.cfg.residue_head == "shared" and name in (batch.get("residue_affine") or {})

    def _protein_head(self, name: str, embedding: torch.Tensor, batch: dict[str, Any]
                      ) -> torch.Tensor:
        """Teacher ``name``'s per-protein prediction (standardised like its targets): its head
        on the embedding; shared with the per-residue targets, that head's per-residue units
        mapped to per-protein ones."""
        out = self.student.teacher_heads[name](embedding)
        if self._shared(name, batch):
            scale, shift = batch["residue_affine"][name]
            out = out * scale + shift
        return out

    def _residue_loss(self, hidden: torch.Tensor, rmask: torch.Tensor, name: str,
                      target: torch.Tensor, window: int, shared: bool = False) -> torch.Tensor:
        """Per-sample loss ``[B]`` of teacher ``name``'s per-residue head against its
        per-residue (or per-window: the student's states pooled over the same windows,
        :func:`mtdp.residue_windows.pool_windows`) targets, averaged over the protein
        (``residue_weighting=window``: summed, over the batch's mean window count).
        ``shared``: the prediction is the per-protein map (embedding projection, then the
        teacher head) of each window's mean state."""
        with self._autocast():
            if window > 1:
                hidden, wmask = pool_windows(hidden, rmask, window)
            else:
                wmask = rmask.bool()
            pred = self.student.teacher_heads[name](self.student.project(hidden)) if shared \
                else self.student.residue_heads[name](hidden)
        wmask = wmask.float()
        per_pos = kd_loss(pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1]),
                          kind=self.cfg.kd_loss, temperature=self.cfg.temperature
                          ).view(wmask.shape)
        per_protein = (per_pos * wmask).sum(1)
        if self.cfg.residue_weighting == "window":
            return per_protein / wmask.sum(1).mean().clamp_min(1.0)
        return per_protein / wmask.sum(1).clamp_min(1.0)

    def _head_grads(self, res: dict[str, Any], batch: dict[str, Any]
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per teacher, the gradient of each sample's (per-protein) KD loss at the head's
        output ``[B, d_k]``, and the embeddings the heads read ``[B, E]`` (all detached)."""
        deltas = []
        for name in self.teachers:
            out = res["heads"][name].detach().float().requires_grad_(True)
            with torch.enable_grad():
                loss = kd_loss(out, batch["targets"][name], kind=self.cfg.kd_loss,
                               temperature=self.cfg.temperature).sum()
                (delta,) = torch.autograd.grad(loss, out)
            deltas.append(delta)
        return deltas, res["embedding"].detach().float()

    @torch.no_grad()
    def _heldout_forward(self, batch: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """:meth:`forward` of a held-out batch (default: the fixed reward batch) in eval mode
        (training mode restored)."""
        batch = self.reward_batch if batch is None else batch
        assert batch is not None
        was = self.student.training
        self.student.eval()
        res = self.forward(batch, model=self.student)
        self.student.train(was)
        return res

    def reward_head_grads(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """:meth:`_head_grads` of the fixed reward batch (eval mode): the ``align`` credit's
        held-out side."""
        return self._head_grads(self._heldout_forward(), self.reward_batch)

    def _heads_only(self, res: dict[str, Any], batch: dict[str, Any], sel: torch.Tensor
                    ) -> torch.Tensor:
        """Per-sample KD of the teachers *not* selected, through their heads only (the
        embedding detached) ``[B]``: the selection decides what shapes the student, while every
        head keeps learning its teacher, so a per-sample credit stays measurable for a teacher
        the policy has stopped choosing (else a dropped teacher's credit decays to nothing and
        it can never come back)."""
        emb = res["embedding"].detach()
        with self._autocast():
            heads = {k: self._protein_head(k, emb, batch) for k in self.teachers}
        kd = kd_losses(heads, {k: batch["targets"][k] for k in self.teachers},
                       kind=self.cfg.kd_loss, temperature=self.cfg.temperature)
        return combine(kd, 1.0 - sel)

    @torch.no_grad()
    def contrast_credit(self, res: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        """``s_ik = L(head_k(x_i), t_π(i)k) - L(head_k(x_i), t_ik)`` ``[B, K]``: how much better
        the student predicts sample i's own target of teacher k than other proteins' (π: the
        mean over up to 4 cyclic shifts of the batch). Targets that carry nothing about their
        protein (noise, another protein's features) score ≈ 0, however predictable their
        average is. A one-protein batch has nothing to compare with: NaN (ignored)."""
        n = len(batch["ids"])
        if n < 2:
            return torch.full((n, len(self.teachers)), float("nan"), device=self.device)
        out = []
        for name in self.teachers:
            pred, tgt = res["heads"][name].float(), batch["targets"][name]
            own = kd_loss(pred, tgt, kind=self.cfg.kd_loss, temperature=self.cfg.temperature)
            other = torch.stack([kd_loss(pred, tgt.roll(k, 0), kind=self.cfg.kd_loss,
                                         temperature=self.cfg.temperature)
                                 for k in range(1, min(n, 5))]).mean(0)
            out.append(other - own)
        return torch.stack(out, 1)

    def _heldout_credit(self) -> None:
        """Contrast credit of the next held-out batch (eval mode) with its policy states: the
        policy learns from proteins the student never trains on, so a target it could only
        memorise (another protein's features) earns nothing however often it is seen."""
        if not self.credit_batches:
            raise ValueError("selector_credit 'heldout' needs held-out proteins: give the "
                             "teacher dataset a validation split, or use selector_credit batch")
        batch = self.credit_batches[self._credit_turn % len(self.credit_batches)]
        self._credit_turn += 1
        res = self._heldout_forward(batch)
        self.selector.add_credit(self.contrast_credit(res, batch),
                                 state=self.selector.state(res["pooled"], res["kd"],
                                                           batch["lengths"]))

    def _credit_sources(self, credit: bool) -> tuple[Any, bool]:
        """The align credit's held-out gradients (or None), and whether the contrast credit
        comes from held-out proteins (then measured here, before the step)."""
        if not credit:
            return None, False
        if self.selector.reward_kind == "align":
            return self.reward_head_grads(), False
        if self.cfg.selector_credit == "heldout":
            self._heldout_credit()
            return None, True
        return None, False

    def align_credit(self, res: dict[str, Any], batch: dict[str, Any], held) -> torch.Tensor:
        """``s_ik = mean_j (δ_ik·δ_jk)(e_i·e_j)`` ``[B, K]``, δ and e centred on the reward
        batch: the inner product of sample i's and the reward batch's (centred) gradients of
        teacher k's linear head weights."""
        deltas, emb = self._head_grads(res, batch)
        h_deltas, h_emb = held
        mu = h_emb.mean(0)
        gram = (emb - mu) @ (h_emb - mu).T
        out = []
        for d, hd in zip(deltas, h_deltas):
            dm = hd.mean(0)
            out.append((((d - dm) @ (hd - dm).T) * gram).mean(1))
        return torch.stack(out, 1)

    def reward_losses(self) -> torch.Tensor:
        """Held-out KD loss per teacher on the fixed reward batch ``[K]`` (eval mode)."""
        return self._heldout_forward()["kd"].float().mean(0)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimiser step (micro-batched by ``batch_tokens``); returns metrics."""
        cfg = self.cfg
        self.model.train()
        rl = self.selector.kind == "rl" and self.reward_batch is not None \
            and self.selector.reward_kind == "heldout"
        if rl and self._reward_before is None:
            self._reward_before = self.reward_losses()
        credit = self.selector.wants_credit and (
            self.reward_batch is not None or self.selector.reward_kind == "contrast")
        held, on_heldout = self._credit_sources(credit)
        micro = split_batch(batch, cfg.batch_tokens)
        n = len(batch["ids"])
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"mlm": 0.0, "kd": 0.0, "loss": 0.0}
        kd_each = torch.zeros(len(self.teachers))
        for j, mb in enumerate(micro):
            res = self.forward(mb)
            sel = self.selector.select(res["pooled"], res["kd"], mb["lengths"], mb.get("oracle"))
            if credit and not on_heldout:
                self.selector.add_credit(self.align_credit(res, mb, held) if held is not None
                                         else self.contrast_credit(res, mb))
            kd_sample = combine(res["kd"], sel)
            per_sample = cfg.mlm_weight * res["mlm"] + cfg.kd_weight * kd_sample
            if credit:
                per_sample = per_sample + cfg.kd_weight * self._heads_only(res, mb, sel)
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
            metrics.update(self.selector.update(torch.zeros(len(self.teachers))))
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
    shared = cfg.residue_head == "shared"
    residue = {} if shared else {k: dims[k] for k in stats.residues}
    # Each teacher head's output units (raw = out * std + mean): what the student's own
    # predictions of its teachers are read with (StudentModel.teacher_vectors).
    units = {}
    for k, name in enumerate(stats.names):
        rs = stats.residues.get(name) if shared else None
        mean, std = (rs.mean, rs.std) if rs is not None else (stats.mean[k], stats.std[k])
        units[name] = {"mean": mean.float().tolist(), "std": std.float().clamp_min(1e-6).tolist()}
    overrides: dict[str, Any] = {"teachers": dims, "max_len": cfg.max_len or max_len,
                                 "residue_teachers": residue,
                                 "metadata": {**(metadata or {}), "head_units": units}}
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    if cfg.pool_norm:
        overrides["pool_norm"] = True
    overrides.update(architecture(cfg))
    torch.manual_seed(cfg.seed)
    return StudentModel(StudentConfig.preset(cfg.preset, **overrides))


def architecture(cfg: DistillConfig) -> dict[str, int]:
    """The student sizes ``cfg`` sets over its preset's (``d_kv`` follows ``d_model`` and the
    heads, ``d_ff`` is 4 × ``d_model`` unless given)."""
    base = StudentConfig.preset(cfg.preset)
    out = {k: getattr(cfg, k) for k in ("d_model", "num_layers", "num_heads", "d_ff",
                                        "embed_dim") if getattr(cfg, k)}
    if cfg.d_model or cfg.num_heads:
        width = cfg.d_model or base.d_model
        heads = cfg.num_heads or base.num_heads
        out["d_kv"] = width // heads
        out.setdefault("d_ff", 4 * width if cfg.d_model else base.d_ff)
    return out


def build_selector(cfg: DistillConfig, stats: TeacherStats, state_dim: int, rank: int = 0
                   ) -> TeacherSelector:
    """The teacher selector configured by ``cfg`` (per-rank action RNG, shared policy init)."""
    sel = TeacherSelector(stats.names, state_dim, mode=cfg.selector, hidden=cfg.selector_hidden,
                          lr=cfg.selector_lr, entropy_weight=cfg.selector_entropy,
                          baseline_momentum=cfg.selector_momentum,
                          warmup_steps=cfg.selector_warmup_steps,
                          init_prob=cfg.selector_init_prob, seed=cfg.seed,
                          reward=cfg.selector_reward, state=cfg.selector_state)
    sel.generator.manual_seed(cfg.seed * 1000 + rank + 1)
    return sel


def new_distiller(cfg: DistillConfig, stats: TeacherStats, max_len: int, total_steps: int, *,
                  device: torch.device | str = "cpu",
                  metadata: dict[str, Any] | None = None) -> Distiller:
    """A single-process :class:`Distiller` with a fresh student and selector for ``cfg``: the
    one way scripts, tests and the in-process loop set up training (Ray Train wraps the
    student in DDP first, see :mod:`.ray_job`)."""
    student = build_student(cfg, stats, max_len, metadata).to(device)
    selector = build_selector(cfg, stats, student.config.d_model).to(device)
    return Distiller(student, selector, cfg, total_steps, device)
