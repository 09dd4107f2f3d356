"""Stored embeddings out of the store: the proteins of an input run (or given ids) as
Parquet, ``.npy`` (+ ``.ids.txt``) or HDF5 (:func:`mtdp.outputs.h5_writer`: the layout of
ProtTrans' and bio_embeddings' per-protein files), float32 or float16."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..outputs import (DTYPES, embedding_table, h5_writer, npy_writer, output_format,
                       parquet_schema, parquet_writer)
from .lance import EmbeddingStore, ModelTable, StoreError

EXPORT_FORMATS = ("parquet", "npy", "h5")
CHUNK = 8192


def export_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``parquet``, ``npy`` or ``h5`` from ``fmt`` or the file's extension."""
    return output_format(path, fmt, EXPORT_FORMATS)


def export_run(store: EmbeddingStore, table: ModelTable, run: str, output: str | os.PathLike,
               fmt: str | None = None, ids: Sequence[str] | None = None,
               dtype: str = "float32") -> int:
    """Write the embeddings of run ``run``'s proteins (only ``ids`` of them, if given), in
    the run's order; returns the rows written.

    Raises:
        StoreError: the run is unknown, or some of its sequences have no embedding of this
            model (named, with how to compute them).
    """
    fmt = export_format(output, fmt)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
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
    writer(table, run_ids, hashes, Path(output), meta, dtype)
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


def _parquet(table, ids, hashes, out, meta, dtype) -> None:
    schema = parquet_schema(table.dim, False, meta, dtype)
    with parquet_writer(out, schema) as w:
        for chunk_ids, emb, lengths in _chunks(table, ids, hashes):
            w.write_table(embedding_table(chunk_ids, lengths, emb, schema))


def _npy(table, ids, hashes, out, meta, dtype) -> None:
    with npy_writer(out, len(ids), table.dim, meta, dtype) as (array, ids_fh):
        row = 0
        for chunk_ids, emb, _ in _chunks(table, ids, hashes):
            array[row:row + len(emb)] = emb
            row += len(emb)
            ids_fh.writelines(i + "\n" for i in chunk_ids)


def _h5(table, ids, hashes, out, meta, dtype) -> None:
    with h5_writer(out, meta, False, dtype) as w:
        for chunk_ids, emb, lengths in _chunks(table, ids, hashes):
            w.add(chunk_ids, lengths, emb)
