"""Phase 2 of a precompute: the Ray Data actor that adds one teacher's embeddings to a shard.

One model load per actor (``num_gpus`` per actor on GPU clusters, a fraction of a CPU
otherwise so read/write tasks still get scheduled). A shard arrives as one batch and
:func:`mtdp.embed.embed_sequences` sorts it by length into token-budget batches. A failing
batch is retried by halving down to single proteins; a protein that still fails (or gives a
non-finite fp16 vector) becomes a reject with its reason. Dead actors are restarted and their
work retried by Ray (Ray Data's actor defaults ``max_restarts=-1``, ``max_task_retries=-1``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def load_stage(batch):
    """Ray Data UDF: one ``{shard, path}`` item → the staged shard as one table (one batch)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in batch["path"].to_pylist()]
    table = pa.concat_tables(tables)
    return table.append_column("_reject", pa.array([None] * table.num_rows, pa.string()))


class TeacherActor:
    """Ray Data actor UDF: adds one teacher's fp16 embedding column to a batch of proteins.

    The model is loaded once per actor. Each call embeds the batch with
    :func:`mtdp.embed.embed_sequences` (length-sorted token-budget batches). Rows already
    rejected by an earlier teacher are skipped.
    """

    def __init__(self, spec: str, column: str, batch_tokens: int | None, threads: int,
                 retries: int, faults: dict, residue_column: str = "") -> None:
        import torch

        from ..models.base import best_device
        from ..models.teachers import load_teacher

        device = best_device()
        if device.type == "cpu":
            torch.set_num_threads(max(1, threads))  # stay within the actor's CPU reservation
        self.embedder = load_teacher(spec).to(device)
        self.column, self.batch_tokens, self.retries = column, batch_tokens, retries
        self.residue_column = residue_column
        self.faults = faults
        self.unembeddable = set(faults.get("unembeddable_ids") or [])

    def _embed(self, ids: list[str], seqs: list[str]) -> np.ndarray:
        from ..embed import embed_sequences

        bad = self.unembeddable.intersection(ids)
        if bad:
            raise RuntimeError(f"injected embedding failure for {sorted(bad)[0]}")
        if not self.residue_column:
            return embed_sequences(self.embedder, seqs, batch_tokens=self.batch_tokens), None
        return embed_sequences(self.embedder, seqs, batch_tokens=self.batch_tokens,
                               per_residue=True)

    def _robust(self, ids: list[str], seqs: list[str], out: np.ndarray, residues: dict,
                reasons: list, rows: list[int]) -> None:
        """Embed ``rows`` into ``out`` (and their per-residue states into ``residues`` when this
        actor keeps them); on failure split in halves, retry singles, reject what still fails."""
        attempts = 1 + (self.retries if len(rows) == 1 else 0)
        for _ in range(attempts):
            try:
                emb, res = self._embed([ids[i] for i in rows], [seqs[i] for i in rows])
                out[rows] = emb
                if res is not None:
                    residues.update(zip(rows, res))
                return
            except Exception as exc:  # noqa: BLE001 - any model error: isolate, never drop
                error = exc
                self._free_memory()
        if len(rows) > 1:
            mid = len(rows) // 2
            self._robust(ids, seqs, out, residues, reasons, rows[:mid])
            self._robust(ids, seqs, out, residues, reasons, rows[mid:])
        else:
            reasons[rows[0]] = (f"{self.embedder.name}: {type(error).__name__}: {error}"
                                f" (after {attempts} attempt(s))")

    def _free_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __call__(self, batch):
        import pyarrow as pa

        marker = self.faults.get("crash_actor_once")
        if marker and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)  # simulate a dying worker (OOM kill, node loss): Ray must retry
        t0 = time.perf_counter()
        ids = batch["id"].to_pylist()
        seqs = batch["sequence"].to_pylist()
        reasons = batch["_reject"].to_pylist()
        dim = self.embedder.dim
        out = np.zeros((len(seqs), dim), dtype=np.float32)
        todo = [i for i, r in enumerate(reasons) if r is None]
        residues: dict[int, np.ndarray] = {}
        if todo:
            self._robust(ids, seqs, out, residues, reasons, todo)
            failed = [i for i in todo if reasons[i] is not None]
            if len(todo) >= 8 and len(failed) == len(todo):
                # Every protein failing is a broken teacher/device, not bad records: stop (a
                # rerun resumes) instead of rejecting the whole input.
                raise RuntimeError(f"teacher {self.embedder.name} failed on all {len(todo)} "
                                   f"proteins of a shard; first error: {reasons[failed[0]]}")
        half = out.astype(np.float16)
        finite = np.isfinite(half).all(axis=1)
        res16 = {i: r.astype(np.float16) for i, r in residues.items()}
        for i in todo:
            if reasons[i] is None and not finite[i]:
                reasons[i] = (f"{self.embedder.name}: non-finite embedding in float16 "
                              f"(max |x| {np.abs(out[i]).max():.3g})")
            elif reasons[i] is None and i in res16 and not np.isfinite(res16[i]).all():
                reasons[i] = f"{self.embedder.name}: non-finite per-residue state in float16"
        seconds = time.perf_counter() - t0
        column = pa.FixedSizeListArray.from_arrays(pa.array(half.reshape(-1), pa.float16()), dim)
        batch = batch.set_column(batch.schema.get_field_index("_reject"), "_reject",
                                 pa.array(reasons, pa.string()))
        batch = batch.append_column(self.column, column)
        if self.residue_column:
            batch = batch.append_column(self.residue_column, _residue_array(
                [res16.get(i) if reasons[i] is None else None for i in range(len(seqs))], dim))
        # Busy time spread over the rows, summed by the writer for per-teacher throughput.
        per_row = seconds / max(1, len(seqs))
        return batch.append_column(f"_sec{self.column}", pa.array([per_row] * len(seqs),
                                                                   pa.float64()))


def _residue_array(states: list[np.ndarray | None], dim: int):
    """``list<fixed_size_list<float16>[dim]>`` array of float16 ``[L_i, dim]`` states, one entry
    per row (null for rejected rows)."""
    import pyarrow as pa

    lengths = [0 if s is None else len(s) for s in states]
    flat = np.concatenate([s for s in states if s is not None] or [np.zeros((0, dim))])
    inner = pa.FixedSizeListArray.from_arrays(
        pa.array(flat.astype(np.float16, copy=False).reshape(-1), pa.float16()), dim)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32), pa.int32())
    mask = pa.array([s is None for s in states])
    return pa.ListArray.from_arrays(offsets, inner, mask=mask)
