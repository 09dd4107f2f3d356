"""Pooling per-residue states into one vector per protein."""
from __future__ import annotations

import torch


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, L, D] over positions where ``mask`` [B, L] is true.

    Rows with no valid position give zeros rather than NaN.
    """
    m = mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden * m).sum(dim=1)
    count = m.sum(dim=1).clamp_min(1.0)
    return total / count
