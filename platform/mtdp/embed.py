"""The embedding engine: any :class:`~mtdp.embedder.Embedder` + sequences → embeddings, fast.

* Sequences are sorted by length and grouped into batches under a *token budget* (padded
  tokens per batch), so short proteins travel in large batches and padding waste is small.
* Batches are padded only to their longest member and run under ``torch.inference_mode``.
* Results are restored to input order.
* Files are streamed: a FASTA is read in chunks, each chunk embedded and appended to the
  output, so memory stays bounded on any input size. The output appears atomically (written
  to ``*.partial`` and renamed at the end), so a killed run never leaves a file that looks done.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .embedder import Embedder
from .sequences import Record, SequenceError, iter_fasta, prepare_records

#: Padded tokens per batch. Attention memory grows with L², so the budget is in tokens, not
#: proteins; 8k tokens keeps the paper student's CPU activations ~100 MB.
DEFAULT_BATCH_TOKENS_CPU = 8192
DEFAULT_BATCH_TOKENS_GPU = 65536
#: Records read, embedded and written per step when streaming files.
DEFAULT_CHUNK = 4096


def default_batch_tokens(device: torch.device) -> int:
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


def embed_sequences(embedder: Embedder, sequences: Sequence[str], *,
                    batch_tokens: int | None = None, per_residue: bool = False,
                    progress: bool = False):
    """Embed prepared sequences; returns ``[N, dim]`` float32 in input order, or
    ``(array, per_residue_list)`` when ``per_residue``."""
    budget = (batch_tokens or embedder.preferred_batch_tokens(per_residue)
              or default_batch_tokens(embedder.device))
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


def output_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``parquet`` or ``npy`` from an explicit ``fmt`` or the output file's extension."""
    if fmt:
        if fmt not in ("parquet", "npy"):
            raise ValueError(f"format must be 'parquet' or 'npy', not {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".npy":
        return "npy"
    raise ValueError(f"cannot tell the output format from {path!r}: use .parquet or .npy "
                     "(or pass --format)")


def parquet_schema(dim: int, per_residue: bool, metadata: dict[str, str]):
    """Arrow schema of an embeddings file: ``id``, ``length``, ``embedding`` (+ per-residue)."""
    import pyarrow as pa

    fields = [pa.field("id", pa.string(), nullable=False),
              pa.field("length", pa.int32(), nullable=False),
              pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)]
    if per_residue:
        fields.append(pa.field("per_residue", pa.list_(pa.list_(pa.float32(), dim))))
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in metadata.items()})


def embed_file(embedder: Embedder, input_path: str | os.PathLike, output_path: str | os.PathLike,
               *, fmt: str | None = None, batch_tokens: int | None = None,
               chunk_size: int = DEFAULT_CHUNK, per_residue: bool = False,
               max_len: int | None = None, on_duplicate: str = "error",
               on_invalid: str = "error", progress: bool = True) -> EmbedSummary:
    """Embed every record of a FASTA (plain or gzip) into Parquet or ``.npy`` (+ ``.ids.txt``).

    Sequences are validated, cleaned and truncated to ``max_len`` (default: the model's) with
    :func:`mtdp.sequences.prepare_records`; rows come out in input order. With
    ``on_invalid="skip"`` or ``on_duplicate="keep-first"`` skipped records are listed in a
    ``<output>.rejects.tsv`` file, never dropped silently.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fmt = output_format(output_path, fmt)
    if per_residue and fmt != "parquet":
        raise ValueError("per-residue output needs Parquet (.parquet): residue counts vary")
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    limit = min(max_len or embedder.max_len, embedder.max_len)
    rejects: list[SequenceError] = []

    def records() -> Iterator[Record]:
        return prepare_records(iter_fasta(input_path), max_len=limit, on_duplicate=on_duplicate,
                               on_invalid=on_invalid, rejects=rejects)

    meta = {"mtdp_version": __version__, "model": embedder.name, "source": embedder.source,
            "dim": str(embedder.dim), "max_len": str(limit),
            "pretrained": str(embedder.pretrained).lower(), "input": os.fspath(input_path)}
    summary = EmbedSummary(output=str(out), model=embedder.name, dim=embedder.dim)
    partial = out.with_name(out.name + ".partial")
    t0 = time.perf_counter()
    if fmt == "npy":
        # A .npy needs its row count up front: a cheap first pass validates and counts.
        n = sum(1 for _ in records())
        rejects.clear()
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                          shape=(n, embedder.dim))
        ids_path = out.with_suffix(".ids.txt")
        ids_partial = ids_path.with_name(ids_path.name + ".partial")
        row = 0
        bar = _progress(n, progress, embedder.name)
        with open(ids_partial, "w") as ids_fh:
            for chunk in _chunks(records(), chunk_size):
                emb = embed_sequences(embedder, [r.sequence for r in chunk],
                                      batch_tokens=batch_tokens)
                array[row:row + len(chunk)] = emb
                row += len(chunk)
                ids_fh.writelines(r.id + "\n" for r in chunk)
                summary.residues += sum(len(r.sequence) for r in chunk)
                bar.update(len(chunk))
        bar.close()
        array.flush()
        del array
        os.replace(partial, out)
        os.replace(ids_partial, ids_path)
        (out.with_suffix(".meta.json")).write_text(json.dumps(meta, indent=2))
        summary.proteins = row
    else:
        schema = parquet_schema(embedder.dim, per_residue, meta)
        bar = _progress(None, progress, embedder.name)
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            for chunk in _chunks(records(), chunk_size):
                seqs = [r.sequence for r in chunk]
                res = embed_sequences(embedder, seqs, batch_tokens=batch_tokens,
                                      per_residue=per_residue)
                emb, per_res = res if per_residue else (res, None)
                cols = {"id": pa.array([r.id for r in chunk], pa.string()),
                        "length": pa.array([len(s) for s in seqs], pa.int32()),
                        "embedding": pa.FixedSizeListArray.from_arrays(
                            pa.array(emb.reshape(-1), pa.float32()), embedder.dim)}
                if per_residue:
                    cols["per_residue"] = pa.array([r.tolist() for r in per_res],
                                                   schema.field("per_residue").type)
                writer.write_table(pa.table(cols, schema=schema))
                summary.proteins += len(chunk)
                summary.residues += sum(len(s) for s in seqs)
                bar.update(len(chunk))
        bar.close()
        os.replace(partial, out)
    summary.seconds = time.perf_counter() - t0
    summary.rejected = [str(e) for e in rejects]
    if rejects:
        rej = out.with_name(out.name + ".rejects.tsv")
        with open(rej, "w") as fh:
            fh.write("id\trecord\treason\n")
            fh.writelines(f"{e.seq_id}\t{e.record}\t{e.reason}\n" for e in rejects)
    return summary


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Ids and ``[N, dim]`` float32 embeddings from a file written by :func:`embed_file`."""
    p = Path(path)
    if p.suffix == ".npy":
        ids = p.with_suffix(".ids.txt").read_text().splitlines()
        return ids, np.load(p)
    import pyarrow.parquet as pq

    table = pq.read_table(p, columns=["id", "embedding"])
    dim = table.schema.field("embedding").type.list_size
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    return table.column("id").to_pylist(), emb.astype(np.float32, copy=False)
