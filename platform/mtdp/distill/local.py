"""Training in one process, without Ray: rows held in memory (numpy columns as Ray Data hands
them over), shuffled each epoch, one :meth:`~.core.Distiller.train_step` per batch. For
sweeps, checks and notebooks; the job (:mod:`.ray_job`) streams rows through Ray Train."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .batches import TeacherStats, make_batch
from .core import Distiller


def take_rows(rows: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    """The rows ``idx`` of column arrays ``rows`` (``id``, ``sequence``, teacher columns)."""
    return {k: (np.asarray(v, dtype=object) if isinstance(v, list) else v)[idx]
            for k, v in rows.items()}


def train_epochs(dist: Distiller, rows: dict[str, Any], stats: TeacherStats, *, epochs: int,
                 batch_size: int, seed: int = 0,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None
                 ) -> dict[str, float]:
    """Train ``epochs`` passes over ``rows`` (a seeded permutation per epoch, the last partial
    batch dropped; MLM masks seeded by the epoch); returns the last step's metrics and calls
    ``on_epoch(epoch, metrics)`` after each pass."""
    n = len(rows["id"])
    if n < batch_size:
        raise ValueError(f"{n} proteins, fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)

    def batches(_: int) -> list[np.ndarray]:
        order = rng.permutation(n)
        return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return _run_epochs(dist, rows, stats, epochs, batches, on_epoch)


def token_batches(lengths: np.ndarray, batch_tokens: int, seed: int) -> list[np.ndarray]:
    """One epoch of length-sorted batches of at most ``batch_tokens`` padded tokens each
    (:func:`mtdp.embed.token_budget_batches`), in a seeded random order: no padding work, and
    every step sees similar token counts."""
    from ..embed import token_budget_batches

    groups = [np.asarray(g) for g in token_budget_batches(list(map(int, lengths)),
                                                          batch_tokens, overhead=1)]
    order = np.random.default_rng(seed).permutation(len(groups))
    return [groups[i] for i in order]


def train_token_epochs(dist: Distiller, rows: dict[str, Any], stats: TeacherStats, *,
                       epochs: int, batch_tokens: int, seed: int = 0,
                       on_epoch: Callable[[int, dict[str, float]], None] | None = None
                       ) -> dict[str, float]:
    """:func:`train_epochs` with token-budget batches (:func:`token_batches`, reshuffled each
    epoch) instead of a fixed protein count: what long proteins on a GPU need."""
    lengths = np.array([len(s) for s in rows["sequence"]])
    return _run_epochs(dist, rows, stats, epochs,
                       lambda ep: token_batches(lengths, batch_tokens, seed + ep), on_epoch)


def _run_epochs(dist: Distiller, rows: dict[str, Any], stats: TeacherStats, epochs: int,
                batches: Callable[[int], list[np.ndarray]],
                on_epoch: Callable[[int, dict[str, float]], None] | None) -> dict[str, float]:
    """One :meth:`~.core.Distiller.train_step` per batch of row indices ``batches(epoch)``
    (MLM masks seeded by the epoch); ``on_epoch`` after each pass; the last step's metrics."""
    metrics: dict[str, float] = {}
    for ep in range(epochs):
        for idx in batches(ep):
            batch = make_batch(take_rows(rows, idx), stats, mlm_prob=dist.cfg.mlm_prob,
                               seed=ep, device=dist.device)
            metrics = dist.train_step(batch)
        if on_epoch is not None:
            on_epoch(ep, metrics)
    return metrics
