"""The benchmark's embeddings come from the embedding store (:mod:`mtdp.store`): each model
embeds each distinct sequence once, whichever task, benchmark run, probe setting, job or
service asked for it first; the store's table per model identity
(:func:`mtdp.store.store_identity`: weights, length limit and policy) never serves a changed
model."""
from __future__ import annotations

import os

import numpy as np

from ..embed import CacheCounts, embed_cached, model_table
from ..store import EmbeddingStore
from .tasks import Task


def cached_embeddings(embedder, task: Task, cache_dir: str | os.PathLike | None, *,
                      batch_tokens: int | None = None, store: EmbeddingStore | None = None
                      ) -> tuple[np.ndarray, float, bool, int]:
    """``(embeddings [N, dim], proteins/s, from_cache, proteins embedded now)`` for a task,
    through the store at ``cache_dir`` (or ``store``). The rate is this call's when it
    embedded anything, else the model's recorded throughput in the store."""
    store = store or EmbeddingStore(cache_dir)
    table = model_table(store, embedder)
    counts = CacheCounts()
    emb = embed_cached(embedder, task.sequences, table, batch_tokens=batch_tokens,
                       counts=counts)
    if counts.new:
        table.optimize()
        rate = counts.new / counts.seconds if counts.seconds > 0 else float("nan")
    else:
        rate = table.throughput()
    return emb, rate, counts.new == 0, counts.new
