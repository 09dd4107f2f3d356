"""The embedding job's Ray Data stages, after the shared staging (:mod:`mtdp.precompute.stage`):
staged shards → sequence hashes → one group per hash shard (distinct sequences, minus those
the store holds) → the model's actor pool → one store writer, committing batch by batch."""
from __future__ import annotations

import os
import time

import numpy as np

#: Environment variable with a JSON object of fault injections, for tests and drills only:
#: ``kill_driver_after_batches`` (N: after committing its N-th batch the writer SIGKILLs the
#: job's driver and itself).
FAULTS_ENV = "MTDP_EMBED_FAULTS"
#: Columns every stage passes on: proteins of the group, distinct sequences, stored ones.
COUNTS = ("n_rows", "n_unique", "n_reused")


def hashed(batch, *, hash_shards: int):
    """Staged rows → ``seq_hash`` and ``hash_shard`` (the same sequence, the same shard)."""
    import pyarrow as pa

    from ..store.keys import seq_hash

    seqs = batch["sequence"].to_pylist()
    hashes = [seq_hash(s) for s in seqs]
    return pa.table({"sequence": seqs, "seq_hash": hashes,
                     "hash_shard": [int(h[:8], 16) % hash_shards for h in hashes]})


def missing(group, *, store: str, identity: dict, name: str):
    """One hash shard → its distinct sequences the store does not hold yet (plus the
    group's counts in the first row; an all-stored group is one row with an empty sequence)."""
    import pyarrow as pa

    from ..store import EmbeddingStore

    hashes = group["seq_hash"].to_pylist()
    seqs = dict(zip(hashes, group["sequence"].to_pylist()))
    table = EmbeddingStore(store).model(identity, name)
    stored = set(table.lookup(list(seqs)))
    todo = [h for h in seqs if h not in stored]
    counts = {"n_rows": len(hashes), "n_unique": len(seqs), "n_reused": len(stored)}
    rows = todo or [""]
    cols = {"seq_hash": rows, "sequence": [seqs.get(h, "") for h in rows]}
    for k, v in counts.items():
        cols[k] = [v] + [0] * (len(rows) - 1)
    return pa.table(cols)


class EmbedActor:
    """Ray Data actor: one model load; each batch embedded with the engine (length-sorted
    token-budget batches, the job's length policy)."""

    def __init__(self, spec: str, too_long: str, max_len: int | None, batch_tokens: int | None,
                 threads: int) -> None:
        import torch

        from ..models.base import best_device
        from ..models.registry import load_embedder

        device = best_device()
        if device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        self.embedder = load_embedder(spec, device=device)
        self.too_long, self.max_len, self.batch_tokens = too_long, max_len, batch_tokens

    def __call__(self, batch):
        import pyarrow as pa

        from ..embed import embed_sequences

        seqs = batch["sequence"].to_pylist()
        real = [i for i, s in enumerate(seqs) if s]
        dim = self.embedder.dim
        emb = np.zeros((len(seqs), dim), dtype=np.float32)
        t0 = time.perf_counter()
        if real:
            emb[real] = embed_sequences(self.embedder, [seqs[i] for i in real],
                                        batch_tokens=self.batch_tokens, too_long=self.too_long,
                                        max_len=self.max_len)
        limit = min(self.max_len or self.embedder.max_len, self.embedder.max_len)
        seen = [len(s) if self.too_long == "window" else min(len(s), limit) for s in seqs]
        out = batch.drop_columns(["sequence"])
        out = out.append_column("length", pa.array(seen, pa.int32()))
        out = out.append_column("embedding", pa.FixedSizeListArray.from_arrays(
            pa.array(emb.reshape(-1), pa.float32()), dim))
        return out.append_column("seconds", pa.array([time.perf_counter() - t0] +
                                                     [0.0] * (len(seqs) - 1), pa.float64()))


class StoreWriter:
    """Ray Data actor (one per job): commits each batch to the store (``merge_insert``, so
    a retried or repeated batch never duplicates a row); returns the batch's counts."""

    def __init__(self, store: str, identity: dict, name: str, faults: dict | None = None
                 ) -> None:
        from ..store import EmbeddingStore

        self.table = EmbeddingStore(store).model(identity, name)
        self.faults, self.batches = faults or {}, 0

    def __call__(self, batch):
        import pyarrow as pa

        keep = [i for i, h in enumerate(batch["seq_hash"].to_pylist()) if h]
        rows = batch.take(pa.array(keep, pa.int64())) if len(keep) < batch.num_rows else batch
        written, seconds = 0, float(pa.compute.sum(batch["seconds"]).as_py() or 0.0)
        if rows.num_rows:
            dim = self.table.dim
            emb = rows["embedding"].combine_chunks().flatten().to_numpy(
                zero_copy_only=False).reshape(-1, dim)
            written = self.table.add(rows["seq_hash"].to_pylist(), rows["length"].to_pylist(),
                                     emb)
            self.table.record_time(rows.num_rows, seconds)
        self.batches += 1
        if self.faults.get("kill_driver_after_batches") == self.batches:
            # TESTING (FAULTS_ENV): the job's driver is killed (SIGKILL) mid-run.
            import signal

            os.kill(int(self.faults["driver_pid"]), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)  # and this writer: nothing more commits
        sums = {k: int(pa.compute.sum(batch[k]).as_py() or 0) for k in COUNTS}
        return pa.table({"computed": [rows.num_rows], "written": [written], "seconds": [seconds],
                         **{k: [v] for k, v in sums.items()}, "finished_at": [time.time()]})
