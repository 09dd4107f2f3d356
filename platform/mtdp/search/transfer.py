"""Annotation transfer from nearest neighbours in embedding space (Littmann et al. 2021,
"Embeddings from deep learning transfer GO annotations beyond homology", Sci Rep; goPredSim).

Each of a query's ``k`` nearest references lends its labels with a reliability that falls
with its distance: ``0.5 / (0.5 + d)`` for Euclidean distances (the paper's form), ``1 − d``
(the cosine similarity, clipped to [0, 1]) for cosine distances.

* terms (GO): a term's score is the sum of the reliabilities of the neighbours annotated with
  it, divided by ``k`` — in [0, 1]; a term every neighbour carries at distance 0 scores 1;
* classes (localization): a weighted vote, the score of a class its share of the summed
  reliabilities;
* values (regression): the reliability-weighted mean.

Exactly ``k`` neighbours (ties at the k-th distance broken by position, where goPredSim keeps
them all).
"""
from __future__ import annotations

import numpy as np

from .index import METRICS

#: Reference rows per distance block (bounds memory: block × queries floats).
BLOCK = 16384


def similarity(distance: np.ndarray, metric: str) -> np.ndarray:
    """The reliability of a neighbour at ``distance`` under ``metric`` (see the module)."""
    d = np.asarray(distance, dtype=np.float64)
    if metric == "euclidean":
        return 0.5 / (0.5 + np.maximum(d, 0.0))
    if metric == "cosine":
        return np.clip(1.0 - d, 0.0, 1.0)
    raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")


def knn(reference: np.ndarray, queries: np.ndarray, k: int, metric: str = "cosine"
        ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``reference`` for each query: ``(index [Q, k], distance [Q, k])``,
    nearest first (``k`` capped at the reference size). Cosine distance is 1 − cosine
    similarity (a zero vector is at distance 1 from everything); Euclidean is not squared."""
    import torch

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
    qry = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    if ref.ndim != 2 or qry.ndim != 2 or ref.shape[1] != qry.shape[1]:
        raise ValueError(f"reference {tuple(ref.shape)} and queries {tuple(qry.shape)} must be "
                         "2-d with the same dimension")
    k = min(k, len(ref))
    if k < 1:
        raise ValueError("knn needs at least one reference and k ≥ 1")
    if metric == "cosine":
        ref = torch.nn.functional.normalize(ref, dim=1)
        qry = torch.nn.functional.normalize(qry, dim=1)
    best_d = torch.full((len(qry), 0), 0.0)
    best_i = torch.zeros((len(qry), 0), dtype=torch.long)
    q2 = (qry * qry).sum(1, keepdim=True)
    for start in range(0, len(ref), BLOCK):
        block = ref[start:start + BLOCK]
        dot = qry @ block.T
        d = 1.0 - dot if metric == "cosine" else \
            (q2 + (block * block).sum(1)[None, :] - 2 * dot).clamp_min(0.0)
        d_all = torch.cat([best_d, d], 1)
        i_all = torch.cat([best_i, torch.arange(start, start + len(block)).expand(len(qry), -1)], 1)
        best_d, pos = torch.topk(d_all, min(k, d_all.shape[1]), dim=1, largest=False)
        best_i = torch.gather(i_all, 1, pos)
    dist = best_d.double().numpy()
    if metric == "euclidean":
        dist = np.sqrt(dist)
    return best_i.numpy(), dist


def transfer(index: np.ndarray, distance: np.ndarray, labels: np.ndarray, kind: str,
             metric: str = "cosine", n_classes: int | None = None) -> np.ndarray:
    """Scores of each query from its neighbours (``index``/``distance`` from :func:`knn`).

    ``labels`` of the references: ``multilabel`` a [R, T] 0/1 matrix → [Q, T] term scores;
    ``binary``/``multiclass`` class numbers [R] → [Q, classes] vote shares; ``regression``
    values [R] → [Q] weighted means.
    """
    sim = similarity(distance, metric)
    k = index.shape[1]
    if kind == "multilabel":
        y = np.asarray(labels, dtype=np.float32)
        out = np.zeros((len(index), y.shape[1]), dtype=np.float64)
        for j in range(k):
            out += sim[:, j:j + 1] * y[index[:, j]]
        return out / k
    # A tiny floor keeps neighbours at zero reliability as tie-breaking votes.
    w = sim + 1e-9
    if kind in ("binary", "multiclass"):
        y = np.asarray(labels, dtype=np.int64)
        c = n_classes or int(y.max()) + 1
        votes = np.zeros((len(index), c))
        for j in range(k):
            np.add.at(votes, (np.arange(len(index)), y[index[:, j]]), w[:, j])
        return votes / votes.sum(axis=1, keepdims=True)
    if kind == "regression":
        y = np.asarray(labels, dtype=np.float64)
        return (w * y[index]).sum(axis=1) / w.sum(axis=1)
    raise ValueError(f"unknown task kind {kind!r}")
