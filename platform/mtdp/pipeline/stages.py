"""The Ray Data stages of the one embedding pipeline, after staging (:mod:`.staging`): staged
shards → sequence hashes → one group per hash shard (distinct sequences, minus those the store
holds for the model) → the model's actor pool → one store writer, committing batch by batch.
:mod:`.passes` chains them; the embedding job runs one pass, precompute one per teacher.

The actor never loses a protein to another's failure: a failing batch is retried by halving
down to single proteins, and a protein that still fails (or gives a non-finite vector) becomes
a reject with its reason, written nowhere in the store. Every protein of a batch failing is a
broken model or device, not bad records: the actor then raises, and a rerun resumes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..runtime import release_heap_after_batch

#: A hash group's counts (first row of :func:`missing`'s output): proteins, distinct
#: sequences, stored ones; summed by :func:`group_counts` before anything is embedded.
COUNTS = ("n_rows", "n_unique", "n_reused")
#: Fewest proteins in a batch for "all of them failed" to mean a broken model.
BROKEN_MODEL_MIN = 8


def hashed(batch, *, hash_shards: int):
    """Staged shard files (a ``file`` column) → their rows' ``sequence``, ``seq_hash`` and
    ``hash_shard`` (the same sequence, the same shard). Each file is read whole here, its
    sequence column alone: a task holds what its files hold, at any input size (Ray Data's
    Parquet reader bundled many shards into one task, whose worker then kept ~0.5 GB of heap
    per 1 M proteins)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..store.keys import seq_hash

    seqs = [s for f in batch["file"].to_pylist()
            for s in pq.read_table(f, columns=["sequence"])["sequence"].to_pylist()]
    hashes = [seq_hash(s) for s in seqs]
    return pa.table({"sequence": pa.array(seqs, pa.string()),
                     "seq_hash": pa.array(hashes, pa.string()),
                     "hash_shard": pa.array([int(h[:8], 16) % hash_shards for h in hashes],
                                            pa.int64())})


def missing(group, *, store: str, identity: dict, name: str, per_residue: bool = False,
            residue_window: int = 1):
    """One hash shard → its distinct sequences the store does not hold yet for this model
    (with ``per_residue``: not both vector and states), plus the group's counts in the first
    row; an all-stored group is one row with an empty sequence."""
    import pyarrow as pa

    from ..store import EmbeddingStore, ResidueTable

    hashes = group["seq_hash"].to_pylist()
    seqs = dict(zip(hashes, group["sequence"].to_pylist()))
    table = EmbeddingStore(store).model(identity, name)
    stored = table.stored(list(seqs))
    if per_residue:
        stored &= ResidueTable(table, residue_window).stored(list(stored))
    todo = [h for h in seqs if h not in stored]
    counts = {"n_rows": len(hashes), "n_unique": len(seqs), "n_reused": len(stored)}
    rows = todo or [""]
    cols = {"seq_hash": rows, "sequence": [seqs.get(h, "") for h in rows]}
    for k, v in counts.items():
        cols[k] = [v] + [0] * (len(rows) - 1)
    return pa.table(cols)


def group_counts(block):
    """A block of :func:`missing`'s output → one row: the sums of its groups' counts, and
    ``n_todo``, the sequences in it to embed (rows with a sequence)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    sums = {k: [int(pc.sum(block[k]).as_py() or 0)] for k in COUNTS}
    blank = int(pc.sum(pc.equal(block["sequence"], "").cast(pa.int64())).as_py() or 0)
    return pa.table({**sums, "n_todo": [block.num_rows - blank]})


class EmbedActor:
    """Ray Data actor: one model load (a GPU each on GPU clusters, a share of the CPUs
    otherwise); each batch embedded with the engine (length-sorted token-budget batches, the
    pass's length policy), failures isolated to the proteins that cause them.

    ``faults`` (tests and drills only): ``crash_actor_once`` (a marker path: the first call
    kills this process; the pass starts again, see :func:`.passes.embed_pass`),
    ``unembeddable_sequences`` (sequences whose embedding raises).
    """

    def __init__(self, spec: str, too_long: str, max_len: int | None, batch_tokens: int | None,
                 threads: int, retries: int = 2, per_residue: bool = False,
                 faults: dict | None = None, residue_window: int = 1,
                 precision: str = "fp32") -> None:
        import torch

        from ..models.base import best_device
        from ..models.registry import load_embedder

        device = best_device()
        if device.type == "cpu":
            torch.set_num_threads(max(1, threads))  # stay within the actor's CPU reservation
        self.embedder = load_embedder(spec, device=device, precision=precision)
        self.too_long, self.max_len, self.batch_tokens = too_long, max_len, batch_tokens
        self.retries, self.per_residue, self.faults = retries, per_residue, faults or {}
        self.residue_window = residue_window
        self.unembeddable = set(self.faults.get("unembeddable_sequences") or [])

    def _embed(self, seqs: list[str]):
        from ..embed import embed_sequences

        if self.unembeddable.intersection(seqs):
            raise RuntimeError("injected embedding failure")
        out = embed_sequences(self.embedder, seqs, batch_tokens=self.batch_tokens,
                              too_long=self.too_long, max_len=self.max_len,
                              per_residue=self.per_residue,
                              residue_window=self.residue_window)
        return out if self.per_residue else (out, None)

    def _robust(self, seqs: list[str], out: np.ndarray, states: dict, reasons: list,
                rows: list[int]) -> None:
        """Embed ``rows`` into ``out`` (their per-residue states into ``states``); on failure
        split in halves, retry singles, and give what still fails its reason."""
        attempts = 1 + (self.retries if len(rows) == 1 else 0)
        for _ in range(attempts):
            try:
                emb, res = self._embed([seqs[i] for i in rows])
                out[rows] = emb
                if res is not None:
                    states.update((i, r.astype(np.float16)) for i, r in zip(rows, res))
                return
            except Exception as exc:  # noqa: BLE001 - any model error: isolate, never drop
                error = exc
                self._free_memory()
        if len(rows) > 1:
            mid = len(rows) // 2
            self._robust(seqs, out, states, reasons, rows[:mid])
            self._robust(seqs, out, states, reasons, rows[mid:])
        else:
            reasons[rows[0]] = (f"{self.embedder.name}: {type(error).__name__}: {error}"
                                f" (after {attempts} attempt(s))")

    def _free_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _embed_all(self, seqs: list[str]) -> tuple[np.ndarray, dict, list]:
        real = [i for i, s in enumerate(seqs) if s]  # "" rows only carry a group's counts
        out = np.zeros((len(seqs), self.embedder.dim), dtype=np.float32)
        states: dict[int, np.ndarray] = {}
        reasons: list[str | None] = [None] * len(seqs)
        if real:
            self._robust(seqs, out, states, reasons, real)
        failed = [i for i in real if reasons[i] is not None]
        if len(real) >= BROKEN_MODEL_MIN and len(failed) == len(real):
            raise RuntimeError(f"model {self.embedder.name} failed on all {len(real)} proteins "
                               f"of a batch; first error: {reasons[failed[0]]}")
        finite = np.isfinite(out).all(axis=1)
        for i in real:
            if reasons[i] is None and not finite[i]:
                reasons[i] = f"{self.embedder.name}: non-finite embedding"
            elif reasons[i] is None and i in states and not np.isfinite(states[i]).all():
                reasons[i] = f"{self.embedder.name}: non-finite per-residue state in float16"
        return out, states, reasons

    def __call__(self, batch):
        import pyarrow as pa

        marker = self.faults.get("crash_actor_once")
        if marker and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)  # TESTING: a dying worker (OOM kill, node loss): Ray must retry
        seqs = batch["sequence"].to_pylist()
        t0 = time.perf_counter()
        emb, states, reasons = self._embed_all(seqs)
        limit = min(self.max_len or self.embedder.max_len, self.embedder.max_len)
        seen = [len(s) if self.too_long == "window" else min(len(s), limit) for s in seqs]
        out = batch.drop_columns(["sequence"])
        out = out.append_column("length", pa.array(seen, pa.int32()))
        out = out.append_column("embedding", pa.FixedSizeListArray.from_arrays(
            pa.array(emb.reshape(-1), pa.float32()), self.embedder.dim))
        if self.per_residue:
            from ..store.residues import states_array

            out = out.append_column("states", states_array(
                [states.get(i) if reasons[i] is None and seqs[i] else None
                 for i in range(len(seqs))], self.embedder.dim))
        out = out.append_column("reason", pa.array(reasons, pa.string()))
        return out.append_column("seconds", pa.array([time.perf_counter() - t0] +
                                                     [0.0] * (len(seqs) - 1), pa.float64()))


class StoreWriter:
    """Ray Data actor (one per pass): commits each batch's embedded proteins to the store;
    returns what it committed (proteins, residues, actor seconds, when) and the batch's
    rejects. Its rows are new by construction (sequences the store lacked at the table
    versions ``since``, distinct across the pass), so it appends while no other process
    commits to the model's tables, and merges (``merge_insert``) once one has
    (:class:`mtdp.store.Appender`): a commit's cost does not grow with the table, nor (with
    Lance's caches bounded to :attr:`CACHE_MB`) does its memory.

    ``faults`` (tests and drills only): ``kill_driver_after_batches`` (N: after its N-th commit
    the writer SIGKILLs the driver, ``driver_pid``, and itself), ``fail_after_batches`` (N:
    the writer raises after its N-th commit).
    """

    #: MB of each of Lance's caches in the writer: it reads no index, and every commit's
    #: manifest would otherwise stay cached (+150 MB over 1 M rows in 2,048-row commits).
    CACHE_MB = 16

    def __init__(self, store: str, identity: dict, name: str, since: dict,
                 per_residue: bool = False, faults: dict | None = None,
                 residue_window: int = 1) -> None:
        from ..store import Appender, EmbeddingStore, ResidueTable

        self.table = EmbeddingStore(store, cache_mb=self.CACHE_MB).model(identity, name)
        self.residues = ResidueTable(self.table, residue_window) if per_residue else None
        self.via = Appender(self.table.table, since["vectors"])
        self.via_residues = (Appender(self.residues.table, since["residues"])
                             if self.residues is not None else None)
        self.faults, self.batches = faults or {}, 0

    def _commit(self, rows) -> int:
        emb = rows["embedding"].combine_chunks().flatten().to_numpy(
            zero_copy_only=False).reshape(-1, self.table.dim)
        hashes = rows["seq_hash"].to_pylist()
        if self.residues is not None:  # states first: a stored vector implies its states
            self.residues.add(hashes, rows["length"].to_pylist(), rows["states"],
                              via=self.via_residues)
        return self.table.add(hashes, rows["length"].to_pylist(), emb, via=self.via)

    def __call__(self, batch):
        import pyarrow as pa

        hashes, reasons = batch["seq_hash"].to_pylist(), batch["reason"].to_pylist()
        keep = [i for i, (h, r) in enumerate(zip(hashes, reasons)) if h and r is None]
        rejected = [(h, r) for h, r in zip(hashes, reasons) if h and r is not None]
        rows = batch.take(pa.array(keep, pa.int64())) if len(keep) < batch.num_rows else batch
        written, seconds = 0, float(pa.compute.sum(batch["seconds"]).as_py() or 0.0)
        merged = self.via.merged
        if rows.num_rows:
            written = self._commit(rows)
            self.table.record_time(rows.num_rows, seconds)
        self.batches += 1
        release_heap_after_batch()
        self._faults()
        return pa.table({
            "computed": [rows.num_rows], "written": [written], "seconds": [seconds],
            "merged": [self.via.merged - merged],
            "residues": [int(pa.compute.sum(rows["length"]).as_py() or 0)],
            "finished_at": [time.time()],
            "rejected_hash": pa.array([[h for h, _ in rejected]], pa.list_(pa.string())),
            "rejected_reason": pa.array([[r for _, r in rejected]], pa.list_(pa.string()))})

    def _faults(self) -> None:
        if self.faults.get("kill_driver_after_batches") == self.batches:
            # TESTING: the job's driver is killed (SIGKILL) mid-run.
            import signal

            os.kill(int(self.faults["driver_pid"]), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)  # and this writer: nothing more commits
        if self.faults.get("fail_after_batches") == self.batches:
            raise RuntimeError(f"injected failure after {self.batches} committed batch(es)")
