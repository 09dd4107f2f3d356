"""Embedding files: Parquet (``id``, ``length``, ``embedding`` [+ ``per_residue``]), ``.npy``
(+ ``.ids.txt`` and ``.meta.json``) or HDF5 in the ProtTrans / bio_embeddings layout (one
dataset per protein, ``original_id`` attribute, a mapping file), float32 or float16, written
atomically, and read back.

Writers stream: rows are appended chunk by chunk to a temporary file beside the output
(:func:`mtdp.io.atomic_path`), which is renamed over the output only when everything is
written; on any failure the temporary file is removed, so no half-written file ever sits
under the output's name.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .io import atomic_open, atomic_path, write_text
from .sequences import SequenceError

FORMATS = ("parquet", "npy", "h5")
#: Value types of embedding files (float16 halves them; the vectors are computed in fp32).
DTYPES = ("float32", "float16")


#: File extension → format of embedding files.
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
    if fmt == "h5":
        files += [h5_mapping_path(out), h5_residues_path(out)]
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


def parquet_schema(dim: int, per_residue: bool, metadata: dict[str, str],
                   dtype: str = "float32"):
    """Arrow schema of an embeddings file: ``id``, ``length``, ``embedding`` (+ per-residue)."""
    import pyarrow as pa

    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field("id", pa.string(), nullable=False),
              pa.field("length", pa.int32(), nullable=False),
              pa.field("embedding", pa.list_(value, dim), nullable=False)]
    if per_residue:
        fields.append(pa.field("per_residue", pa.list_(pa.list_(value, dim))))
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in metadata.items()})


def embedding_table(ids: list[str], lengths: list[int], emb: np.ndarray, schema,
                    per_residue: list[np.ndarray] | None = None):
    """One Arrow table of embeddings in ``schema`` (see :func:`parquet_schema`)."""
    import pyarrow as pa

    kind = schema.field("embedding").type
    dim, value = kind.list_size, kind.value_type
    npt = np.float16 if value == pa.float16() else np.float32
    cols = {"id": pa.array(ids, pa.string()), "length": pa.array(lengths, pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(emb, npt).reshape(-1), value), dim)}
    if per_residue is not None:
        flat = np.concatenate([np.asarray(r, npt).reshape(-1, dim) for r in per_residue]) \
            if per_residue else np.zeros((0, dim), npt)
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in per_residue])]).astype(np.int32)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), value), dim)
        cols["per_residue"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner
                                                       ).cast(schema.field("per_residue").type)
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
def npy_writer(path: str | os.PathLike, rows: int, dim: int, meta: dict[str, str],
               dtype: str = "float32") -> Iterator[tuple[np.ndarray, object]]:
    """``(memmap [rows, dim] of dtype, ids file handle)`` for a ``.npy`` output and its
    ``.ids.txt``; on success the ids and ``.meta.json`` are committed first and the ``.npy``
    last (its presence means the set is complete)."""
    out = Path(path)
    ids_path, meta_path = out.with_suffix(".ids.txt"), out.with_suffix(".meta.json")
    with atomic_path(out) as tmp, atomic_open(ids_path) as ids_fh:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype),
                                          shape=(rows, dim))
        yield array, ids_fh
        array.flush()
        del array
        write_text(meta_path, json.dumps(meta, indent=2))


def h5_mapping_path(path: str | os.PathLike) -> Path:
    """``X.mapping.csv`` beside an HDF5 output: dataset key, original id, length."""
    out = Path(path)
    return out.with_name(out.stem + ".mapping.csv")


def h5_residues_path(path: str | os.PathLike) -> Path:
    """``X.residues.h5`` beside an HDF5 output: the per-residue ``(L, d)`` datasets."""
    out = Path(path)
    return out.with_name(out.stem + ".residues.h5")


def h5_key(original_id: str, taken: set[str]) -> str:
    """A dataset name for ``original_id`` that HDF5 reads back as one name and that no other
    protein of the file has: ``/`` (a group separator) becomes ``_``, a leading ``.`` is
    escaped, and a name already taken gets ``~2``, ``~3``... The original id stays in the
    dataset's ``original_id`` attribute and the mapping file."""
    key = original_id.replace("/", "_") or "_"
    if key.startswith("."):
        key = "_" + key
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}~{n}"
    taken.add(key)
    return key


class H5Writer:
    """Per-protein datasets (and, with ``per_residue``, ``(L, d)`` datasets in
    ``X.residues.h5``) keyed as in bio_embeddings' files — a key per protein, the FASTA id in
    ``attrs["original_id"]`` — with ``model_name`` and mtdp's settings as root attributes."""

    def __init__(self, files: dict[str, object], dtype: str):
        self.files, self.dtype, self.taken, self.rows = files, np.dtype(dtype), set(), []

    def add(self, ids: list[str], lengths: list[int], emb: np.ndarray,
            per_residue: list[np.ndarray] | None = None) -> None:
        for j, (pid, n) in enumerate(zip(ids, lengths)):
            key = h5_key(pid, self.taken)
            d = self.files["protein"].create_dataset(key, data=emb[j].astype(self.dtype))
            d.attrs["original_id"] = pid
            if per_residue is not None:
                r = self.files["residue"].create_dataset(
                    key, data=np.asarray(per_residue[j]).astype(self.dtype))
                r.attrs["original_id"] = pid
            self.rows.append((key, pid, n))


@contextlib.contextmanager
def h5_writer(path: str | os.PathLike, meta: dict[str, str], per_residue: bool,
              dtype: str = "float32") -> Iterator[H5Writer]:
    """An :class:`H5Writer` on temporary files that become ``X.h5`` (+ ``X.residues.h5``)
    and ``X.mapping.csv`` when the block completes (all removed if it raises)."""
    import h5py

    out = Path(path)
    attrs = {"model_name": meta.get("model", ""), "dtype": dtype, **meta}
    with contextlib.ExitStack() as stack:
        files = {}
        targets = [("protein", out)] + ([("residue", h5_residues_path(out))] if per_residue
                                        else [])
        for kind, target in targets:
            tmp = stack.enter_context(atomic_path(target, suffix=".h5"))
            f = stack.enter_context(h5py.File(tmp, "w"))
            f.attrs.update({**attrs, "level": "per-protein" if kind == "protein"
                            else "per-residue"})
            files[kind] = f
        mapping = stack.enter_context(atomic_open(h5_mapping_path(out)))
        writer = H5Writer(files, dtype)
        yield writer
        rows = csv.writer(mapping, lineterminator="\n")  # the reader is csv.reader too
        rows.writerow(["", "original_id", "sequence_length"])
        rows.writerows(writer.rows)
    if not per_residue:
        h5_residues_path(out).unlink(missing_ok=True)  # a stale one of an earlier run


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
    """Ids and ``[N, dim]`` float32 embeddings from a file written by :mod:`mtdp.embed`
    (an HDF5 file's ids are its datasets' ``original_id``, in file order of the mapping)."""
    p = Path(path)
    if p.suffix == ".npy":
        ids = p.with_suffix(".ids.txt").read_text().splitlines()
        return ids, np.load(p).astype(np.float32, copy=False)
    if p.suffix in (".h5", ".hdf5"):
        import h5py

        mapping = h5_mapping_path(p)
        with h5py.File(p, "r") as f:
            if mapping.is_file():  # ours: input order
                with open(mapping, newline="") as fh:
                    keys = [row[0] for row in list(csv.reader(fh))[1:]]
            else:  # another tool's (UniProt's, bio_embeddings' without its mapping file)
                keys = [k for k in f if isinstance(f[k], h5py.Dataset)]
                flat = [k for k in keys if f[k].ndim == 1]
                if len(flat) != len(keys):
                    raise ValueError(f"{p}: datasets must be per-protein vectors (1-d); "
                                     f"{len(keys) - len(flat)} are not (per-residue files "
                                     "need pooling first)")
            ids = [str(f[k].attrs.get("original_id", k)) for k in keys]
            emb = np.stack([f[k][()] for k in keys]) if keys else np.zeros((0, 0))
        return ids, emb.astype(np.float32, copy=False)
    import pyarrow.parquet as pq

    table = pq.read_table(p, columns=["id", "embedding"])
    dim = table.schema.field("embedding").type.list_size
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    return table.column("id").to_pylist(), emb.astype(np.float32, copy=False)


def embedding_model(path: str | os.PathLike) -> str | None:
    """The model named in an embeddings file's metadata (Parquet schema metadata, the
    ``.npy``'s ``.meta.json``, HDF5's root ``model_name``), or None where none is recorded."""
    p = Path(path)
    if p.suffix == ".npy":
        meta = p.with_suffix(".meta.json")
        return json.loads(meta.read_text()).get("model") if meta.is_file() else None
    if p.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "r") as f:
            name = f.attrs.get("model_name")
        return str(name) if name else None
    import pyarrow.parquet as pq

    meta = pq.read_schema(p).metadata or {}
    name = meta.get(b"model")
    return name.decode() if name else None
