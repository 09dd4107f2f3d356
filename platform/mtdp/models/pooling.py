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


#: Poolings a teacher offers (``--pooling``): the mean over residues (``masked``, also called
#: ``mean``), the per-feature maximum over residues, both concatenated (``mean+max``, twice the
#: dimension), or the BOS token's state (ESM-2 only).
TEACHER_POOLINGS = ("masked", "max", "mean+max", "bos")


def masked_max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-feature maximum of ``hidden`` [B, L, D] over positions where ``mask`` is true
    (zeros for a row with none)."""
    filled = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
    out = filled.max(dim=1).values
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


def layer_index(layer: int | None, num_layers: int) -> int | None:
    """An esm-extract layer number (0 = embeddings, ``num_layers`` = last, negative from the
    end: -1 = last) as a non-negative index, or None for the last layer (the default, whose
    vectors every earlier store holds).

    Raises:
        ValueError: a layer outside ``-(num_layers + 1) .. num_layers``.
    """
    if layer is None:
        return None
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(f"--repr-layers {layer}: this model has layers 0..{num_layers} "
                         f"(or -1..-{num_layers + 1} from the end)")
    index = layer % (num_layers + 1)
    return None if index == num_layers else index


def selected_layers(repr_layer: int | tuple[int, ...] | None, num_layers: int) -> list[int]:
    """The layer indices a teacher reads: the last by default, one chosen, or several (their
    states concatenated in that order)."""
    if repr_layer is None:
        return [num_layers]
    return list(repr_layer) if isinstance(repr_layer, tuple) else [repr_layer]


def pool_teacher(hidden: torch.Tensor, mask: torch.Tensor, pooling: str,
                 bos: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per protein by ``pooling`` (:data:`TEACHER_POOLINGS`); ``bos`` [B, D] is
    the BOS state where the model has one."""
    if pooling == "masked":
        return masked_mean(hidden, mask)
    if pooling == "max":
        return masked_max(hidden, mask)
    if pooling == "mean+max":
        return torch.cat([masked_mean(hidden, mask), masked_max(hidden, mask)], -1)
    if pooling == "bos" and bos is not None:
        return bos
    raise ValueError(f"pooling {pooling!r} is not offered by this model "
                     f"(choose from {TEACHER_POOLINGS}; bos needs a BOS token: ESM-2)")
