"""Per-residue states averaged over windows of ``w`` consecutive residues: the compact form in
which teacher labels are stored and distilled (window ``j`` holds residues ``[j·w, j·w + w)``,
the last one may be shorter). One definition for the engine that writes them and the student's
training that pools its own states the same way; ``w = 1`` is every residue."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def window_count(length: int, window: int) -> int:
    """Windows of a protein of ``length`` residues."""
    if window < 1:
        raise ValueError(f"residue window must be >= 1, got {window}")
    return -(-length // window)


def window_means(states: np.ndarray, window: int) -> np.ndarray:
    """``[L, d]`` per-residue states → ``[ceil(L / w), d]`` window means (float32)."""
    states = np.asarray(states, dtype=np.float32)
    n = window_count(len(states), window)
    if window == 1:
        return states
    pad = n * window - len(states)
    sums = np.concatenate([states, np.zeros((pad, states.shape[1]), np.float32)]) \
        .reshape(n, window, -1).sum(1)
    counts = np.full(n, window, dtype=np.float32)
    if pad:
        counts[-1] = window - pad
    return sums / counts[:, None]


def pool_windows(hidden: "torch.Tensor", mask: "torch.Tensor", window: int
                 ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Masked window means of a batch: ``hidden`` ``[B, T, d]`` with ``mask`` ``[B, T]`` (1 on
    the residues, which come first in each row) → ``[B, ceil(T / w), d]`` means and the mask
    of windows holding at least one residue ``[B, ceil(T / w)]``."""
    import torch

    b, t, d = hidden.shape
    n = window_count(t, window)
    pad = n * window - t
    m = mask.to(hidden.dtype)
    if pad:
        hidden = torch.nn.functional.pad(hidden, (0, 0, 0, pad))
        m = torch.nn.functional.pad(m, (0, pad))
    sums = (hidden * m.unsqueeze(-1)).view(b, n, window, d).sum(2)
    counts = m.view(b, n, window).sum(2)
    return sums / counts.clamp_min(1.0).unsqueeze(-1), counts > 0
