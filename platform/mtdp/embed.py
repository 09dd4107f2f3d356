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
from .outputs import (check_output, embedding_table, npy_writer, output_format,
                      parquet_schema, parquet_writer, write_rejects)
from .sequences import Record, SequenceError, fit_length, iter_fasta, prepare_records

if TYPE_CHECKING:  # the engine takes any Embedder; it needs no model code at run time
    import torch

    from .models.base import Embedder

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


def fit_to_model(embedder: "Embedder", sequences: Sequence[str], too_long: str = "truncate"
                 ) -> list[str]:
    """``sequences`` as ``embedder`` will see them: cut to its ``max_len`` (or, with
    ``too_long="error"``, a :class:`SequenceError` naming the first one that is too long)."""
    records = [Record(str(i), s, index=i) for i, s in enumerate(sequences, 1)]
    fitted, _ = fit_length(records, embedder.max_len, too_long)
    return [r.sequence for r in fitted]


def embed_sequences(embedder: "Embedder", sequences: Sequence[str], *,
                    batch_tokens: int | None = None, per_residue: bool = False,
                    progress: bool = False, too_long: str = "truncate"):
    """Embed prepared sequences; returns ``[N, dim]`` float32 in input order, or
    ``(array, per_residue_list)`` when ``per_residue``."""
    if any(len(s) > embedder.max_len for s in sequences):
        sequences = fit_to_model(embedder, sequences, too_long)
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
                residues[i] = res[j].numpy()
        bar.update(len(batch))
    bar.close()
    return (out, residues) if per_residue else out


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
    rejects: list[SequenceError] = field(default_factory=list)

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
            chunk, cut = fit_length(chunk, self.limit)
            self.summary.truncated += len(cut)
            self.summary.proteins += len(chunk)
            self.summary.residues += sum(len(r.sequence) for r in chunk)
            yield chunk

    def embed(self, chunk: list[Record], per_residue: bool = False):
        return embed_sequences(self.embedder, [r.sequence for r in chunk],
                               batch_tokens=self.batch_tokens, per_residue=per_residue)


def embed_file(embedder: "Embedder", input_path: str | os.PathLike,
               output_path: str | os.PathLike, *, fmt: str | None = None,
               batch_tokens: int | None = None, chunk_size: int = DEFAULT_CHUNK,
               per_residue: bool = False, max_len: int | None = None,
               on_duplicate: str = "error", on_invalid: str = "error",
               progress: bool = True) -> EmbedSummary:
    """Embed every record of a FASTA (plain or gzip) into Parquet or ``.npy`` (+ ``.ids.txt``).

    Sequences are validated and cleaned (:func:`mtdp.sequences.prepare_records`) and cut to
    ``max_len`` (default and ceiling: the model's); rows come out in input order. With
    ``on_invalid="skip"`` or ``on_duplicate="keep-first"`` skipped records are listed in
    ``<output>.rejects.tsv``, never dropped silently.
    """
    fmt = output_format(output_path, fmt)
    check_output(output_path, fmt, [input_path])
    if per_residue and fmt != "parquet":
        raise ValueError("per-residue output needs Parquet (.parquet): residue counts vary")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = Path(output_path)
    limit = min(max_len or embedder.max_len, embedder.max_len)
    summary = EmbedSummary(output=str(out), model=embedder.name, dim=embedder.dim,
                           max_len=limit)
    job = _FileJob(embedder, os.fspath(input_path), limit, on_duplicate, on_invalid,
                   batch_tokens, chunk_size, summary)
    meta = {"mtdp_version": __version__, "model": embedder.name, "source": embedder.source,
            "dim": str(embedder.dim), "max_len": str(limit),
            "pretrained": str(embedder.pretrained).lower(), "input": os.fspath(input_path)}
    t0 = time.perf_counter()
    if fmt == "npy":
        _write_npy(job, out, meta, progress)
    else:
        _write_parquet(job, out, meta, per_residue, progress)
    summary.seconds = time.perf_counter() - t0
    summary.rejected = [str(e) for e in job.rejects]
    write_rejects(out, job.rejects)
    return summary


class _NoRecords(SequenceError):
    """The input holds no FASTA record at all (raised before the output is committed)."""


def _write_npy(job: _FileJob, out: Path, meta: dict[str, str], progress: bool) -> None:
    # A .npy needs its row count up front: a cheap first pass validates and counts.
    n = sum(1 for _ in job.records())
    job.rejects.clear()
    bar = _progress(n, progress, job.embedder.name)
    with npy_writer(out, n, job.embedder.dim, meta) as (array, ids_fh):
        row = 0
        for chunk in job.chunks():
            array[row:row + len(chunk)] = job.embed(chunk)
            row += len(chunk)
            ids_fh.writelines(r.id + "\n" for r in chunk)
            bar.update(len(chunk))
    bar.close()


def _write_parquet(job: _FileJob, out: Path, meta: dict[str, str], per_residue: bool,
                   progress: bool) -> None:
    schema = parquet_schema(job.embedder.dim, per_residue, meta)
    bar = _progress(None, progress, job.embedder.name)
    with parquet_writer(out, schema) as writer:
        for chunk in job.chunks():
            res = job.embed(chunk, per_residue)
            emb, per_res = res if per_residue else (res, None)
            writer.write_table(embedding_table([r.id for r in chunk],
                                               [len(r.sequence) for r in chunk], emb, schema,
                                               per_res))
            bar.update(len(chunk))
    bar.close()

