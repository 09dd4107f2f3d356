"""The benchmark's embedding cache: each model embeds each task's sequences once.

``<cache_dir>/<model>-<model key>/<task>-<data hash>.parquet``; the model key hashes the
model's identity (:func:`mtdp.models.registry.fingerprint`: class, source, checkpoint SHA-256
or a weight fingerprint, dimension, ``max_len``, parameter count), the data hash the prepared
sequences. A changed model or data set therefore never reuses a stale file.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from ..embed import embed_sequences
from ..io import atomic_path
from ..models.registry import fingerprint, fingerprint_key
from ..outputs import embedding_table, parquet_schema, read_embeddings
from .tasks import Task


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def cached_embeddings(embedder, task: Task, cache_dir: str | os.PathLike, *,
                      key: str | None = None, batch_tokens: int | None = None,
                      known: dict[str, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, float, bool, int]:
    """``(embeddings [N, dim], proteins/s, from_cache, proteins embedded)`` for a task,
    computing and caching the embeddings on first use. Throughput and count are those of the
    run that wrote the file (NaN / 0 if every sequence came from ``known``).

    ``known`` maps sequence → embedding from this model's earlier tasks in the same run (e.g.
    DeepLoc localisation ⊂ membrane), so no sequence is embedded twice; it is updated.
    """
    import pyarrow.parquet as pq

    key = key or fingerprint_key(fingerprint(embedder))
    path = (Path(cache_dir) / f"{_safe(embedder.name)}-{key}" /
            f"{task.name}-{task.data_hash()[:16]}.parquet")
    if path.is_file():
        ids, emb = read_embeddings(path)
        meta = pq.read_schema(path).metadata or {}
        if ids == task.ids and emb.shape[1] == embedder.dim:
            if known is not None:
                known.update(zip(task.sequences, emb))
            return (emb, float(meta.get(b"proteins_per_s", b"nan")), True,
                    int(meta.get(b"embedded", b"0")))
    known = {} if known is None else known
    todo = sorted({s for s in task.sequences if s not in known})
    t0 = time.perf_counter()
    if todo:
        known.update(zip(todo, embed_sequences(embedder, todo, batch_tokens=batch_tokens)))
    seconds = time.perf_counter() - t0
    rate = len(todo) / seconds if todo and seconds > 0 else float("nan")
    emb = np.stack([known[s] for s in task.sequences]).astype(np.float32, copy=False)
    meta = {"model": embedder.name, "model_key": key, "task": task.name,
            "data_hash": task.data_hash(), "seconds": f"{seconds:.3f}",
            "embedded": str(len(todo)),
            "proteins_per_s": f"{rate:.3f}", "device": str(embedder.device)}
    schema = parquet_schema(embedder.dim, False, meta)
    table = embedding_table(task.ids, [len(s) for s in task.sequences], emb, schema)
    with atomic_path(path) as tmp:  # a killed run never leaves a half file that looks done
        pq.write_table(table, tmp, compression="zstd")
    return emb, rate, False, len(todo)
