"""Distillation losses: masked-language modelling and per-teacher knowledge distillation.

Every loss here is returned **per sample** (shape ``[B]``), never reduced over the batch, so
the teacher selector (:mod:`mtdp.selector`) can weight, select and reward samples and teachers
individually. Reduction is the caller's job (a plain mean over the batch, which keeps DDP
gradient averaging equal to the single-process gradient for equal per-rank batch sizes).
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .tokenizer import MASK_ID, STANDARD_RESIDUE_IDS, residue_mask

#: Ignored label value (positions without an MLM target).
IGNORE = -100
KD_KINDS = ("kl", "cosine", "mse")


def mask_tokens(input_ids: torch.Tensor, *, mask_prob: float = 0.15, seed: int = 0,
                keys: Sequence[str] | None = None, mask_id: int = MASK_ID
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of residue positions: of the chosen ``mask_prob`` positions 80 %
    become ``mask_id``, 10 % a random standard residue and 10 % stay unchanged.

    Pad and ``</s>`` are never chosen; every sequence gets at least one target. With ``keys``
    (one string per row, e.g. the protein id) each row's mask depends only on
    ``(seed, key)``, so the same protein is masked identically whichever DDP rank or batch it
    lands in (this is what makes 1-worker and 2-worker runs comparable); ``seed`` should
    include the epoch so masks change between epochs.

    Returns:
        ``(masked_ids, labels)``; ``labels`` holds the original id at target positions and
        :data:`IGNORE` elsewhere.
    """
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
    if keys is not None and len(keys) != input_ids.shape[0]:
        raise ValueError(f"{len(keys)} keys for a batch of {input_ids.shape[0]} rows")
    ids = input_ids.cpu()
    valid = residue_mask(ids).numpy()
    b, width = ids.shape
    u = np.empty((b, width, 3), dtype=np.float64)
    for row in range(b):
        key = zlib.crc32(keys[row].encode()) if keys is not None else row
        u[row] = np.random.default_rng([seed & 0xFFFFFFFF, key]).random((width, 3))
    chosen = (u[..., 0] < mask_prob) & valid
    # Guarantee one target per sequence (short proteins would otherwise often have none).
    none = valid.any(1) & ~chosen.any(1)
    if none.any():
        first = np.where(valid, u[..., 0], np.inf).argmin(1)
        chosen[none, first[none]] = True
    labels = torch.where(torch.from_numpy(chosen), ids, torch.full_like(ids, IGNORE))
    masked = ids.clone()
    to_mask = torch.from_numpy(chosen & (u[..., 1] < 0.8))
    to_random = torch.from_numpy(chosen & (u[..., 1] >= 0.8) & (u[..., 1] < 0.9))
    masked[to_mask] = mask_id
    std = torch.tensor(STANDARD_RESIDUE_IDS, dtype=ids.dtype)
    rand_ids = std[torch.from_numpy((u[..., 2] * len(std)).astype(np.int64).clip(0, len(std) - 1))]
    masked[to_random] = rand_ids[to_random]
    return masked.to(input_ids.device), labels.to(input_ids.device)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample MLM loss: mean cross-entropy over that sample's target positions ``[B]``
    (0 for a row without targets)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE,
                         reduction="none")                                   # [B, L]
    count = (labels != IGNORE).sum(1)
    return ce.sum(1) / count.clamp_min(1)


def standardise(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / std`` per feature (std floored at ``eps``, so constant features stay 0)."""
    return (features.float() - mean) / std.clamp_min(eps)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, *, kind: str = "kl",
            temperature: float = 1.0) -> torch.Tensor:
    """Per-sample distillation loss between a teacher head's output and the (standardised)
    teacher features, both ``[B, D]``; returns ``[B]``.

    * ``kl``: ``τ² · KL(softmax(t/τ) ‖ softmax(s/τ))`` over the feature axis — what the MTDP
      reference code distils (features treated as logits of a distribution);
    * ``cosine``: ``1 - cos(s, t)``;
    * ``mse``: mean squared error over features.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student output {tuple(student.shape)} and teacher features "
                         f"{tuple(teacher.shape)} differ in shape")
    s, t = student.float(), teacher.float()
    if kind == "kl":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_p_t = F.log_softmax(t / temperature, dim=-1)
        log_p_s = F.log_softmax(s / temperature, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temperature ** 2
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=-1)
    if kind == "mse":
        return (s - t).pow(2).mean(-1)
    raise ValueError(f"unknown KD loss {kind!r}; choose from {KD_KINDS}")


def kd_losses(heads: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], *,
              kind: str = "kl", temperature: float = 1.0) -> torch.Tensor:
    """KD loss of every teacher, stacked ``[B, K]`` in the order of ``targets``."""
    missing = set(targets) - set(heads)
    if missing:
        raise ValueError(f"no student head for teacher(s) {sorted(missing)}")
    return torch.stack([kd_loss(heads[k], targets[k], kind=kind, temperature=temperature)
                        for k in targets], dim=1)
