"""Training batches: teacher statistics from a manifest, dataset rows → tensors (MLM masks,
standardised teacher targets, per-residue targets), micro-batches under a token budget."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from ..embed import token_budget_batches
from ..losses import mask_tokens, standardise
from ..residue_windows import window_count
from ..teacher_data import Manifest
from ..tokenizer import ResidueTokenizer


class ResidueStats(NamedTuple):
    """A teacher's per-residue targets: dataset column, per-feature mean / std, and the
    residues per stored vector (``window``, :mod:`mtdp.residue_windows`)."""

    column: str
    mean: torch.Tensor
    std: torch.Tensor
    window: int = 1


@dataclass
class TeacherStats:
    """Teacher names, columns and standardisation statistics from a manifest."""

    names: list[str]
    columns: list[str]
    dims: list[int]
    mean: list[torch.Tensor]
    std: list[torch.Tensor]
    #: Per-residue targets of the distilled teachers that have them, by teacher name.
    residues: dict[str, ResidueStats] = field(default_factory=dict)

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
            residues[name] = ResidueStats(
                t.residue_column, torch.tensor(t.residue_mean, dtype=torch.float32),
                torch.tensor(t.residue_std, dtype=torch.float32), int(t.residue_window))
        return cls(names, [t.column for t in entries], [t.dim for t in entries],
                   [torch.tensor(t.mean, dtype=torch.float32) for t in entries],
                   [torch.tensor(t.std, dtype=torch.float32) for t in entries], residues)

    @classmethod
    def placeholder(cls, dims: dict[str, int]) -> "TeacherStats":
        """Statistics that only name the teachers and their sizes (mean 0, std 1): what
        building an untrained student needs (its heads' shapes)."""
        names = list(dims)
        return cls(names, names, [dims[k] for k in names], [torch.zeros(dims[k]) for k in names],
                   [torch.ones(dims[k]) for k in names])

    def to(self, device: torch.device | str) -> "TeacherStats":
        """Move the standardisation statistics to ``device`` (in place; returns self)."""
        self.mean = [m.to(device) for m in self.mean]
        self.std = [s.to(device) for s in self.std]
        self.residues = {k: r._replace(mean=r.mean.to(device), std=r.std.to(device))
                         for k, r in self.residues.items()}
        return self


#: Column of a controlled study's rows: per protein, 0/1 for each teacher (in the stats' order)
#: that is known to be good for it; read by the ``oracle`` selector only.
GOOD_COLUMN = "good_teachers"


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


def residue_array(x: Any, dim: int) -> np.ndarray:
    """One protein's per-residue (or per-window) states as one ``[n, dim]`` array: Ray Data
    hands nested lists over as arrays of arrays."""
    a = np.asarray(x)
    if a.dtype == object:
        a = np.stack(list(a)) if len(a) else np.zeros((0, dim), dtype=np.float32)
    return a.reshape(-1, dim)


def _residue_targets(col: Any, lengths: list[int], width: int, dim: int,
                     rs: ResidueStats) -> torch.Tensor:
    """Per-residue (or per-window) teacher states of a batch as standardised
    ``[B, ceil(width / w), dim]`` (zeros past each protein's residues)."""
    out = torch.zeros(len(lengths), window_count(width, rs.window), dim, device=rs.mean.device)
    for i, (x, n) in enumerate(zip(col, lengths)):
        a = residue_array(x, dim).astype(np.float32, copy=False)
        want = window_count(n, rs.window)
        if len(a) != want:
            unit = "per-residue states" if rs.window == 1 else \
                f"window means (windows of {rs.window})"
            raise ValueError(f"column {rs.column!r}: {len(a)} {unit} for a protein of {n} "
                             f"residues (expected {want})")
        out[i, :want] = standardise(torch.from_numpy(a).to(rs.mean.device), rs.mean, rs.std)
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
    for name, rs in stats.residues.items():
        dim = stats.dims[stats.names.index(name)]
        res[name] = _residue_targets(rows[rs.column], lengths, input_ids.shape[1], dim,
                                     rs).to(device)
    # Per-residue units -> per-protein standardised units (x * scale + shift), per teacher:
    # what a head shared by both targets needs (DistillConfig.residue_head = shared).
    affine = {}
    for name, rs in stats.residues.items():
        k = stats.names.index(name)
        sd = stats.std[k].clamp_min(1e-6)
        affine[name] = ((rs.std.clamp_min(1e-6) / sd).to(device),
                        ((rs.mean - stats.mean[k]) / sd).to(device))
    batch = {"ids": ids, "input_ids": input_ids.to(device), "masked_ids": masked.to(device),
             "attention_mask": attn.to(device), "labels": labels.to(device),
             "lengths": torch.tensor(lengths, device=device),
             "targets": targets, "residue_targets": res,
             "residue_windows": {k: rs.window for k, rs in stats.residues.items()},
             "residue_affine": affine}
    if GOOD_COLUMN in rows:  # controlled studies only: the known-good teachers, [B, K] 0/1
        batch["oracle"] = torch.as_tensor(_as_matrix(rows[GOOD_COLUMN], len(stats.names),
                                                     GOOD_COLUMN), device=device)
    return batch


def split_batch(batch: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    """Split a batch into micro-batches of at most ``max_tokens`` padded tokens (longest
    first; each re-padded to its own longest member). ``0`` keeps it whole."""
    n = len(batch["ids"])
    if max_tokens <= 0 or n * batch["input_ids"].shape[1] <= max_tokens:
        return [batch]

    groups = token_budget_batches(batch["lengths"].tolist(), max_tokens, overhead=1)
    windows = batch.get("residue_windows", {})
    out = []
    for g in groups:
        idx = torch.tensor(g, device=batch["input_ids"].device)
        width = int(batch["lengths"][idx].max()) + 1
        mb = {"ids": [batch["ids"][i] for i in g], "lengths": batch["lengths"][idx],
              "targets": {k: v[idx] for k, v in batch["targets"].items()},
              # Per-window targets keep the windows of `width` tokens (they are the same
              # windows: every row starts at residue 0).
              "residue_targets": {k: v[idx, :window_count(width, windows.get(k, 1))]
                                  for k, v in batch.get("residue_targets", {}).items()},
              "residue_windows": windows,
              "residue_affine": batch.get("residue_affine", {})}
        for key in ("input_ids", "masked_ids", "attention_mask", "labels"):
            mb[key] = batch[key][idx, :width]
        if "oracle" in batch:
            mb["oracle"] = batch["oracle"][idx]
        out.append(mb)
    return out
