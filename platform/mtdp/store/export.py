"""Stored embeddings out of the store: the proteins of an input run (or given ids) as
Parquet, ``.npy`` (+ ``.ids.txt``) or HDF5 — one dataset per protein id, the layout of
ProtTrans' and bio_embeddings' per-protein files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..io import atomic_path
from ..outputs import (embedding_table, npy_writer, output_format, parquet_schema,
                       parquet_writer)
from .lance import EmbeddingStore, ModelTable, StoreError

EXPORT_FORMATS = ("parquet", "npy", "h5")
CHUNK = 8192


def export_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``parquet``, ``npy`` or ``h5`` from ``fmt`` or the file's extension."""
    return output_format(path, fmt, EXPORT_FORMATS)


def export_run(store: EmbeddingStore, table: ModelTable, run: str, output: str | os.PathLike,
               fmt: str | None = None, ids: Sequence[str] | None = None) -> int:
    """Write the embeddings of run ``run``'s proteins (only ``ids`` of them, if given), in
    the run's order; returns the rows written.

    Raises:
        StoreError: the run is unknown, or some of its sequences have no embedding of this
            model (named, with how to compute them).
    """
    fmt = export_format(output, fmt)
    run_ids, hashes = store.read_ids(run)
    if ids is not None:
        wanted = set(ids)
        unknown = wanted - set(run_ids)
        if unknown:
            raise StoreError(f"{len(unknown)} id(s) are not in run {run!r}, e.g. "
                             f"{sorted(unknown)[:3]}")
        keep = [i for i, x in enumerate(run_ids) if x in wanted]
        run_ids, hashes = [run_ids[i] for i in keep], [hashes[i] for i in keep]
    meta = {"mtdp_version": __version__, "model": table.name, "model_key": table.key,
            "dim": str(table.dim), "store": store.uri, "run": run}
    writer = {"parquet": _parquet, "npy": _npy, "h5": _h5}[fmt]
    writer(table, run_ids, hashes, Path(output), meta)
    return len(run_ids)


def _chunks(table: ModelTable, ids: list[str], hashes: list[str]):
    for i in range(0, len(ids), CHUNK):
        part = hashes[i:i + CHUNK]
        lengths: dict[str, int] = {}
        found = table.lookup(part, lengths)
        missing = [ids[i + k] for k, h in enumerate(part) if h not in found]
        if missing:
            raise StoreError(f"{len(missing)} protein(s) of this run have no {table.name} "
                             f"embedding in the store, e.g. {missing[:3]}: run the embedding "
                             "job (or `mtdp embed --store`) with this model first")
        yield ids[i:i + CHUNK], np.stack([found[h] for h in part]), [lengths[h] for h in part]


def _parquet(table, ids, hashes, out, meta) -> None:
    schema = parquet_schema(table.dim, False, meta)
    with parquet_writer(out, schema) as w:
        for chunk_ids, emb, lengths in _chunks(table, ids, hashes):
            w.write_table(embedding_table(chunk_ids, lengths, emb, schema))


def _npy(table, ids, hashes, out, meta) -> None:
    with npy_writer(out, len(ids), table.dim, meta) as (array, ids_fh):
        row = 0
        for chunk_ids, emb, _ in _chunks(table, ids, hashes):
            array[row:row + len(emb)] = emb
            row += len(emb)
            ids_fh.writelines(i + "\n" for i in chunk_ids)


def _h5(table, ids, hashes, out, meta) -> None:
    import h5py

    if len(set(ids)) != len(ids):
        raise StoreError("HDF5 export keys datasets by protein id: the ids are not unique")
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(meta)
        for chunk_ids, emb, _ in _chunks(table, ids, hashes):
            for i, e in zip(chunk_ids, emb):
                f.create_dataset(i.replace("/", "_"), data=e)
