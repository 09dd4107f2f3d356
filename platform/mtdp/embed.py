"""The embedding engine: any :class:`~mtdp.models.base.Embedder` + sequences → embeddings, fast.

* Sequences longer than the model's ``max_len`` are cut by the one truncation rule
  (:func:`mtdp.sequences.truncate`: the first ``max_len`` residues), or refused
  (``too_long="error"``) — here, for every caller (CLI, Serve, precompute, benchmarks).
* Sequences are sorted by length and grouped into batches under a *token budget* (padded
  tokens per batch), so short proteins travel in large batches and padding waste is small.
* Batches are padded only to their longest member and run under ``torch.inference_mode``.
* Results are restored to input order.
* Files are streamed (:func:`embed_file`): a FASTA is read in chunks, each chunk embedded and
  appended to the output, so memory stays bounded on any input size; the output appears
  atomically (:mod:`mtdp.outputs`), so a killed run never leaves a file that looks done.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from . import __version__
from .store.keys import seq_hash, store_identity
from .outputs import (DTYPES, check_output, embedding_table, h5_writer, npy_writer,
                      output_format, parquet_schema, parquet_writer, write_rejects)
from .residue_windows import window_means
from .runtime import release_heap_after_batch
from .sequences import (Record, SequenceError, fit_length, iter_fasta, prepare_records,
                        windows)

if TYPE_CHECKING:  # the engine takes any Embedder; it needs no model code at run time
    import torch

    from .models.base import Embedder
    from .store.lance import EmbeddingStore, ModelTable

#: Padded tokens per batch. Attention memory grows with L², so the budget is in tokens, not
#: proteins; 8k tokens keeps the paper student's CPU activations ~100 MB.
DEFAULT_BATCH_TOKENS_CPU = 8192
DEFAULT_BATCH_TOKENS_GPU = 65536
#: Records read, embedded and written per step when streaming files.
DEFAULT_CHUNK = 4096


def default_batch_tokens(device: "torch.device") -> int:
    """Token budget per batch for a device."""
    return DEFAULT_BATCH_TOKENS_GPU if device.type == "cuda" else DEFAULT_BATCH_TOKENS_CPU


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_batch: int = 1024,
                         overhead: int = 2) -> list[list[int]]:
    """Group indices into batches, longest first, so ``batch_size × (longest + overhead)`` stays
    within ``max_tokens`` (a single over-budget protein gets a batch of its own).

    ``overhead`` counts special tokens (BOS/EOS) each model adds.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order:
        w = max(width, lengths[i] + overhead)
        if cur and (w * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur, w = [], lengths[i] + overhead
        cur.append(i)
        width = w
    if cur:
        batches.append(cur)
    return batches


def fit_to_model(embedder: "Embedder", sequences: Sequence[str], too_long: str = "truncate",
                 max_len: int | None = None) -> list[str]:
    """``sequences`` as ``embedder`` will see them: cut to its ``max_len`` (or a lower
    ``max_len``; with ``too_long="error"``, a :class:`SequenceError` naming the first one
    that is too long)."""
    records = [Record(str(i), s, index=i) for i, s in enumerate(sequences, 1)]
    fitted, _ = fit_length(records, max_len or embedder.max_len, too_long)
    return [r.sequence for r in fitted]


def embed_sequences(embedder: "Embedder", sequences: Sequence[str], *,
                    batch_tokens: int | None = None, per_residue: bool = False,
                    progress: bool = False, too_long: str = "truncate",
                    window_overlap: int | None = None, max_len: int | None = None,
                    residue_window: int = 1):
    """Embed prepared sequences; returns ``[N, dim]`` float32 in input order, or
    ``(array, per_residue_list)`` when ``per_residue`` (with ``residue_window`` w > 1: each
    protein's states as means over windows of w residues, :mod:`mtdp.residue_windows`).

    Sequences longer than the model's ``max_len``: ``too_long="truncate"`` embeds their first
    ``max_len`` residues, ``"error"`` refuses them, ``"window"`` embeds overlapping windows
    (:func:`mtdp.sequences.windows`) and returns their length-weighted mean (per-residue: each
    residue's mean over the windows that hold it)."""
    limit = min(max_len or embedder.max_len, embedder.max_len)
    if too_long == "window" and any(len(s) > limit for s in sequences):
        res = _embed_windows(embedder, sequences, batch_tokens, per_residue, progress,
                             window_overlap, limit)
        if per_residue and residue_window > 1:
            return res[0], [window_means(r, residue_window) for r in res[1]]
        return res
    if any(len(s) > limit for s in sequences):
        sequences = fit_to_model(embedder, sequences, too_long, limit)
    budget = (batch_tokens or embedder.preferred_batch_tokens(per_residue)
              or default_batch_tokens(embedder.device))
    if budget < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {budget}")
    out = np.zeros((len(sequences), embedder.dim), dtype=np.float32)
    residues: list[np.ndarray | None] = [None] * len(sequences)
    bar = _progress(len(sequences), progress, embedder.name)
    for batch in token_budget_batches([len(s) for s in sequences], budget):
        emb, res = embedder.embed_batch([sequences[i] for i in batch], per_residue=per_residue)
        out[batch] = emb.numpy()
        if per_residue:
            for j, i in enumerate(batch):
                residues[i] = window_means(res[j].numpy(), residue_window) \
                    if residue_window > 1 else res[j].numpy()
        bar.update(len(batch))
    bar.close()
    release_heap_after_batch()  # each call's tensors have other shapes: see HeapReleaser
    return (out, residues) if per_residue else out


@dataclass
class CacheCounts:
    """Proteins of one or more :func:`embed_cached` calls: distinct sequences computed, and
    proteins answered from the store."""

    new: int = 0
    reused: int = 0
    seconds: float = 0.0


def model_table(store: "EmbeddingStore", embedder: "Embedder", too_long: str = "truncate",
                max_len: int | None = None, create: bool = True) -> "ModelTable":
    """``embedder``'s table in ``store`` for sequences cut (or windowed) at ``max_len``
    (default: the model's limit), registered on first use (unless ``create=False``)."""
    identity = store_identity(embedder, too_long, max_len=max_len)
    return store.model(identity, embedder.name, create=create)


def embed_cached(embedder: "Embedder", sequences: Sequence[str], table: "ModelTable | None",
                 *, batch_tokens: int | None = None, too_long: str = "truncate",
                 max_len: int | None = None, counts: CacheCounts | None = None) -> np.ndarray:
    """``[N, dim]`` embeddings of prepared (not yet truncated) ``sequences`` in order, through
    the store: rows of ``table`` are keyed by the SHA-256 of the whole prepared sequence; the
    stored ones are read, the distinct missing ones computed (:func:`embed_sequences`, same
    length policy) and added. ``table=None``: no store, everything computed."""
    counts = counts if counts is not None else CacheCounts()
    limit = min(max_len or embedder.max_len, embedder.max_len)
    hashes = [seq_hash(s) for s in sequences]
    found = table.lookup(hashes) if table is not None else {}
    todo = {h: s for h, s in zip(hashes, sequences) if h not in found}
    if todo:
        t0 = time.perf_counter()
        seqs = list(todo.values())
        emb = embed_sequences(embedder, seqs, batch_tokens=batch_tokens, too_long=too_long,
                              max_len=limit)
        took = time.perf_counter() - t0
        counts.seconds += took
        found.update(zip(todo, emb))
        if table is not None:
            seen = [len(s) if too_long == "window" else min(len(s), limit) for s in seqs]
            table.add(list(todo), seen, emb)
            table.record_time(len(seqs), took)
    counts.new += len(todo)
    counts.reused += len(sequences) - len(todo)  # from the store, or a repeat within the call
    return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False) if hashes \
        else np.zeros((0, embedder.dim), dtype=np.float32)


def _embed_windows(embedder: "Embedder", sequences: Sequence[str], batch_tokens: int | None,
                   per_residue: bool, progress: bool, overlap: int | None, limit: int):
    """``too_long="window"``: every sequence as its windows, embedded together, recombined."""
    pieces, owner, spans = [], [], []
    for i, s in enumerate(sequences):
        for a, b in windows(len(s), limit, overlap):
            pieces.append(s[a:b])
            owner.append(i)
            spans.append((a, b))
    res = embed_sequences(embedder, pieces, batch_tokens=batch_tokens, per_residue=per_residue,
                          progress=progress)
    emb, per_res = res if per_residue else (res, None)
    out = np.zeros((len(sequences), embedder.dim), dtype=np.float64)
    weight = np.zeros(len(sequences))
    for k, i in enumerate(owner):  # length-weighted mean of the windows
        out[i] += (spans[k][1] - spans[k][0]) * emb[k]
        weight[i] += spans[k][1] - spans[k][0]
    out = (out / weight[:, None]).astype(np.float32)
    if not per_residue:
        return out
    stitched = [np.zeros((len(s), embedder.dim)) for s in sequences]
    counts = [np.zeros(len(s)) for s in sequences]
    for k, i in enumerate(owner):  # each residue: mean over the windows that hold it
        a, b = spans[k]
        stitched[i][a:b] += per_res[k]
        counts[i][a:b] += 1
    return out, [(r / c[:, None]).astype(np.float32) for r, c in zip(stitched, counts)]


def _progress(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=f"embed[{desc}]", unit="prot",
                smoothing=0.1, mininterval=1.0)


@dataclass
class EmbedSummary:
    """What :func:`embed_file` did."""

    output: str
    model: str
    dim: int
    proteins: int = 0
    residues: int = 0
    seconds: float = 0.0
    #: Proteins cut to ``max_len`` residues (their first ``max_len`` were embedded).
    truncated: int = 0
    #: Proteins longer than ``max_len`` embedded in overlapping windows (``too_long=window``).
    windowed: int = 0
    #: With a store: distinct sequences computed now, and proteins answered from the store.
    new: int = 0
    reused: int = 0
    max_len: int = 0
    rejected: list[str] = field(default_factory=list)

    @property
    def proteins_per_s(self) -> float:
        return self.proteins / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["proteins_per_s"] = round(self.proteins_per_s, 2)
        return d


def _chunks(it: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(it)
    while chunk := list(islice(it, size)):
        yield chunk


@dataclass
class _FileJob:
    """One :func:`embed_file` call's settings and running counts."""

    embedder: "Embedder"
    input_path: str
    limit: int
    on_duplicate: str
    on_invalid: str
    batch_tokens: int | None
    chunk_size: int
    summary: EmbedSummary
    too_long: str = "truncate"
    table: "ModelTable | None" = None
    rejects: list[SequenceError] = field(default_factory=list)
    counts: CacheCounts = field(default_factory=CacheCounts)
    ids: list[tuple[str, str]] = field(default_factory=list)

    def records(self) -> Iterator[Record]:
        return prepare_records(self._read(), max_len=None, on_duplicate=self.on_duplicate,
                               on_invalid=self.on_invalid, rejects=self.rejects)

    def _read(self) -> Iterator[Record]:
        n = 0
        for n, rec in enumerate(iter_fasta(self.input_path), 1):
            yield rec
        if n == 0:  # an empty input is a mistake, as the server's 400 says for an empty body
            raise _NoRecords("no FASTA records (expected '>id' header lines); nothing to embed",
                             source=self.input_path)

    def chunks(self) -> Iterator[list[Record]]:
        """Chunks of records as the model sees them (truncated), counted in the summary."""
        for chunk in _chunks(self.records(), self.chunk_size):
            self.summary.windowed += sum(len(r.sequence) > self.limit for r in chunk) \
                if self.too_long == "window" else 0
            _, cut = fit_length(chunk, self.limit, self.too_long)  # "error": raises here
            self.summary.truncated += len(cut)
            self.summary.proteins += len(chunk)
            self.summary.residues += sum(self.seen(r.sequence) for r in chunk)
            yield chunk

    def seen(self, sequence: str) -> int:
        """Residues of ``sequence`` the model embeds (all of them in windows)."""
        return len(sequence) if self.too_long == "window" else min(len(sequence), self.limit)

    def embed(self, chunk: list[Record], per_residue: bool = False):
        seqs = [r.sequence for r in chunk]
        if self.table is not None:
            self.ids.extend((r.id, seq_hash(r.sequence)) for r in chunk)
        if per_residue:  # per-residue states are not stored: computed every time
            return embed_sequences(self.embedder, seqs, batch_tokens=self.batch_tokens,
                                   per_residue=True, too_long=self.too_long,
                                   max_len=self.limit)
        return embed_cached(self.embedder, seqs, self.table, batch_tokens=self.batch_tokens,
                            too_long=self.too_long, max_len=self.limit, counts=self.counts)


def embed_file(embedder: "Embedder", input_path: str | os.PathLike,
               output_path: str | os.PathLike, *, fmt: str | None = None,
               batch_tokens: int | None = None, chunk_size: int = DEFAULT_CHUNK,
               per_residue: bool = False, max_len: int | None = None,
               on_duplicate: str = "error", on_invalid: str = "error",
               progress: bool = True, too_long: str = "truncate",
               store: "EmbeddingStore | None" = None, run: str | None = None,
               dtype: str = "float32") -> EmbedSummary:
    """Embed every record of a FASTA (plain or gzip) into Parquet, ``.npy`` (+ ``.ids.txt``)
    or HDF5 (:func:`mtdp.outputs.h5_writer`), values stored as ``dtype``.

    Sequences are validated and cleaned (:func:`mtdp.sequences.prepare_records`) and cut to
    ``max_len`` (default and ceiling: the model's); rows come out in input order. With
    ``on_invalid="skip"`` or ``on_duplicate="keep-first"`` skipped records are listed in
    ``<output>.rejects.tsv``, never dropped silently.
    """
    fmt = output_format(output_path, fmt)
    check_output(output_path, fmt, [input_path])
    if per_residue and fmt == "npy":
        raise ValueError("per-residue output needs Parquet (.parquet) or HDF5 (.h5): residue "
                         "counts vary")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = Path(output_path)
    limit = min(max_len or embedder.max_len, embedder.max_len)
    summary = EmbedSummary(output=str(out), model=embedder.name, dim=embedder.dim,
                           max_len=limit)
    table = model_table(store, embedder, too_long, limit) if store is not None else None
    job = _FileJob(embedder, os.fspath(input_path), limit, on_duplicate, on_invalid,
                   batch_tokens, chunk_size, summary, too_long, table)
    meta = {"mtdp_version": __version__, "model": embedder.name, "source": embedder.source,
            "dim": str(embedder.dim), "max_len": str(limit),
            "pretrained": str(embedder.pretrained).lower(), "input": os.fspath(input_path),
            "pooling": str(getattr(embedder, "pooling", "") or "mean"), "dtype": dtype,
            "precision": str(getattr(embedder, "precision", "fp32"))}
    if getattr(embedder, "repr_layer", None) is not None:
        layer = embedder.repr_layer  # several: concatenated in this order
        meta["layer"] = ",".join(map(str, layer)) if isinstance(layer, tuple) else str(layer)
    t0 = time.perf_counter()
    if fmt == "npy":
        _write_npy(job, out, meta, progress, dtype)
    elif fmt == "h5":
        _write_h5(job, out, meta, per_residue, progress, dtype)
    else:
        _write_parquet(job, out, meta, per_residue, progress, dtype)
    summary.seconds = time.perf_counter() - t0
    summary.rejected = [str(e) for e in job.rejects]
    summary.new, summary.reused = job.counts.new, job.counts.reused
    write_rejects(out, job.rejects)
    if store is not None and run:
        store.write_ids(run, [i for i, _ in job.ids], [h for _, h in job.ids])
    if table is not None:
        table.optimize()
    return summary


class _NoRecords(SequenceError):
    """The input holds no FASTA record at all (raised before the output is committed)."""


def _write_npy(job: _FileJob, out: Path, meta: dict[str, str], progress: bool,
               dtype: str) -> None:
    # A .npy needs its row count up front: a cheap first pass validates and counts.
    n = sum(1 for _ in job.records())
    job.rejects.clear()
    bar = _progress(n, progress, job.embedder.name)
    with npy_writer(out, n, job.embedder.dim, meta, dtype) as (array, ids_fh):
        row = 0
        for chunk in job.chunks():
            array[row:row + len(chunk)] = job.embed(chunk)
            row += len(chunk)
            ids_fh.writelines(r.id + "\n" for r in chunk)
            bar.update(len(chunk))
    bar.close()


def _embedded(job: _FileJob, per_residue: bool, progress: bool):
    """``(ids, lengths, embeddings, per-residue or None)`` chunk by chunk, with a progress bar:
    the loop every streaming writer shares."""
    bar = _progress(None, progress, job.embedder.name)
    for chunk in job.chunks():
        res = job.embed(chunk, per_residue)
        emb, per_res = res if per_residue else (res, None)
        yield [r.id for r in chunk], [job.seen(r.sequence) for r in chunk], emb, per_res
        bar.update(len(chunk))
    bar.close()


def _write_h5(job: _FileJob, out: Path, meta: dict[str, str], per_residue: bool,
              progress: bool, dtype: str) -> None:
    with h5_writer(out, meta, per_residue, dtype) as writer:
        for ids, lengths, emb, per_res in _embedded(job, per_residue, progress):
            writer.add(ids, lengths, emb, per_res)


def _write_parquet(job: _FileJob, out: Path, meta: dict[str, str], per_residue: bool,
                   progress: bool, dtype: str) -> None:
    schema = parquet_schema(job.embedder.dim, per_residue, meta, dtype)
    with parquet_writer(out, schema) as writer:
        for ids, lengths, emb, per_res in _embedded(job, per_residue, progress):
            writer.write_table(embedding_table(ids, lengths, emb, schema, per_res))

