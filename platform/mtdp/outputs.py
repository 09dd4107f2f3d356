"""Embedding files: Parquet (``id``, ``length``, ``embedding`` [+ ``per_residue``]) or ``.npy``
(+ ``.ids.txt`` and ``.meta.json``), written atomically, and read back.

Writers stream: rows are appended chunk by chunk to a temporary file beside the output
(:func:`mtdp.io.atomic_path`), which is renamed over the output only when everything is
written; on any failure the temporary file is removed, so no half-written file ever sits
under the output's name.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import atomic_open, atomic_path, write_text
from .sequences import SequenceError

FORMATS = ("parquet", "npy")


#: File extension → format of embedding files (``mtdp embed`` writes the first two kinds;
#: ``mtdp store export`` all three).
SUFFIX_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".npy": "npy", ".h5": "h5",
                  ".hdf5": "h5"}


def output_format(path: str | os.PathLike, fmt: str | None = None,
                  formats: tuple[str, ...] = FORMATS) -> str:
    """One of ``formats`` from an explicit ``fmt`` or the output file's extension."""
    names = " or ".join(repr(f) for f in formats)
    if fmt:
        if fmt not in formats:
            raise ValueError(f"format must be {names}, not {fmt!r}")
        return fmt
    kind = SUFFIX_FORMATS.get(Path(path).suffix.lower())
    if kind not in formats:
        uses = " or ".join("." + f for f in formats)
        raise ValueError(f"cannot tell the output format from {path!r}: use {uses} "
                         "(or pass --format)")
    return kind


def companions(path: str | os.PathLike, fmt: str) -> list[Path]:
    """Every file an output of format ``fmt`` writes (``.npy`` has its ids and metadata)."""
    out = Path(path)
    files = [out, out.with_name(out.name + ".rejects.tsv")]
    if fmt == "npy":
        files += [out.with_suffix(".ids.txt"), out.with_suffix(".meta.json")]
    return files


def check_output(path: str | os.PathLike, fmt: str, inputs: list[str | os.PathLike]) -> None:
    """Refuse, before any work, an output that would destroy an input or cannot be written:
    one of its files is an input (the same file, symbolic links and hard links included), an
    existing directory, or lies under a parent that is a file."""
    out = Path(path)
    for parent in [out.parent, *out.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output {out}: {parent} is a file, not a folder")
            break
    ins = [Path(p) for p in inputs if os.path.exists(p)]
    for f in companions(out, fmt):
        if f.is_dir():
            raise ValueError(f"output {f} is an existing directory; give a file name")
        if f.exists() and any(os.path.samefile(f, i) for i in ins):
            raise ValueError(f"output {f} is the input file itself; writing it would destroy "
                             "the input — choose another output name")


def parquet_schema(dim: int, per_residue: bool, metadata: dict[str, str]):
    """Arrow schema of an embeddings file: ``id``, ``length``, ``embedding`` (+ per-residue)."""
    import pyarrow as pa

    fields = [pa.field("id", pa.string(), nullable=False),
              pa.field("length", pa.int32(), nullable=False),
              pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)]
    if per_residue:
        fields.append(pa.field("per_residue", pa.list_(pa.list_(pa.float32(), dim))))
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in metadata.items()})


def embedding_table(ids: list[str], lengths: list[int], emb: np.ndarray, schema,
                    per_residue: list[np.ndarray] | None = None):
    """One Arrow table of embeddings in ``schema`` (see :func:`parquet_schema`)."""
    import pyarrow as pa

    dim = schema.field("embedding").type.list_size
    cols = {"id": pa.array(ids, pa.string()), "length": pa.array(lengths, pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(emb, np.float32).reshape(-1), pa.float32()), dim)}
    if per_residue is not None:
        cols["per_residue"] = pa.array([r.tolist() for r in per_residue],
                                       schema.field("per_residue").type)
    return pa.table(cols, schema=schema)


@contextlib.contextmanager
def parquet_writer(path: str | os.PathLike, schema) -> Iterator:
    """A ``pyarrow.parquet.ParquetWriter`` on a temporary file that becomes ``path`` when the
    block completes (removed if it raises)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            yield writer


@contextlib.contextmanager
def npy_writer(path: str | os.PathLike, rows: int, dim: int, meta: dict[str, str]
               ) -> Iterator[tuple[np.ndarray, object]]:
    """``(memmap [rows, dim] float32, ids file handle)`` for a ``.npy`` output and its
    ``.ids.txt``; on success the ids and ``.meta.json`` are committed first and the ``.npy``
    last (its presence means the set is complete)."""
    out = Path(path)
    ids_path, meta_path = out.with_suffix(".ids.txt"), out.with_suffix(".meta.json")
    with atomic_path(out) as tmp, atomic_open(ids_path) as ids_fh:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
        yield array, ids_fh
        array.flush()
        del array
        write_text(meta_path, json.dumps(meta, indent=2))


def write_rejects(output: str | os.PathLike, rejects: list[SequenceError]) -> Path | None:
    """``OUTPUT.rejects.tsv`` listing skipped records (``id, record, reason``), or — with no
    rejects — remove a stale one left by an earlier run. Returns the file written, if any."""
    path = Path(output)
    path = path.with_name(path.name + ".rejects.tsv")
    if not rejects:
        path.unlink(missing_ok=True)
        return None
    with atomic_open(path) as fh:
        fh.write("id\trecord\treason\n")
        fh.writelines(f"{e.seq_id}\t{e.record}\t{e.reason}\n" for e in rejects)
    return path


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Ids and ``[N, dim]`` float32 embeddings from a file written by :mod:`mtdp.embed`."""
    p = Path(path)
    if p.suffix == ".npy":
        ids = p.with_suffix(".ids.txt").read_text().splitlines()
        return ids, np.load(p)
    import pyarrow.parquet as pq

    table = pq.read_table(p, columns=["id", "embedding"])
    dim = table.schema.field("embedding").type.list_size
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    return table.column("id").to_pylist(), emb.astype(np.float32, copy=False)
