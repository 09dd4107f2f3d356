"""Embeddings computed elsewhere (UniProt's published ProtT5 vectors, another tool's HDF5) as
a named external model of the store: keyed by the sequences of a FASTA given with them, so
``mtdp search`` and ``mtdp annotate`` can use them as references, and stored queries as
queries. Their vectors cannot be computed for new sequences: a query that is not stored is an
error naming it."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .keys import seq_hash
from .lance import EmbeddingStore, ModelTable, StoreError

EXTERNAL = "external"
#: Rows per store commit while importing.
CHUNK = 8192


def external_identity(name: str, dim: int) -> dict[str, Any]:
    """The identity of an imported model: its name and dimension (no weights to hash)."""
    return {"class": EXTERNAL, "name": name, "dim": int(dim)}


def external_table(store: EmbeddingStore, name: str) -> ModelTable | None:
    """The store's imported model ``name``, or None when it holds none by that name."""
    for m in store.models():
        if m["identity"].get("class") == EXTERNAL and m["identity"].get("name") == name:
            return store.model(m["identity"], name, create=False)
    return None


def import_embeddings(store: EmbeddingStore, path: str | os.PathLike,
                      fasta: str | os.PathLike, name: str, run: str) -> dict[str, int]:
    """Store the vectors of ``path`` (any file ``mtdp embed`` writes or that reads like one:
    Parquet, ``.npy`` + ids, HDF5 keyed by id or ``original_id``) under model ``name``, each
    keyed by its protein's sequence in ``fasta``, and the ids as run ``run``.

    Raises:
        ValueError: an id of the file with no record in the FASTA, duplicate ids, non-finite
            values, or a model ``name`` already imported with another dimension — each named
            with the file.
    """
    from ..outputs import read_embeddings
    from ..sequences import iter_fasta, prepare

    if not name or name != name.strip():
        raise ValueError(f"--name {name!r}: give the external model a name")
    ids, x = read_embeddings(path)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: id {dup!r} appears more than once")
    if x.ndim != 2 or not len(ids):
        raise ValueError(f"{path}: no per-protein vectors found")
    bad = np.where(~np.isfinite(x).all(axis=1))[0]
    if len(bad):
        raise ValueError(f"{path}: non-finite values in the vector of {ids[bad[0]]!r}")
    seqs = {r.id: prepare(r.sequence, max_len=None, seq_id=r.id, source=str(fasta))
            for r in iter_fasta(fasta)}
    missing = [i for i in ids if i not in seqs]
    if missing:
        raise ValueError(f"{len(missing)} id(s) of {path} have no record in {fasta}, e.g. "
                         f"{missing[:3]}: the store keys vectors by sequence")
    held = external_table(store, name)
    if held is not None and held.dim != x.shape[1]:
        raise ValueError(f"{store.uri} already holds external model {name!r} with "
                         f"{held.dim}-d vectors; {path} has {x.shape[1]}-d ones")
    table = held or store.model(external_identity(name, x.shape[1]), name)
    hashes = [seq_hash(seqs[i]) for i in ids]
    added = 0
    for s in range(0, len(ids), CHUNK):
        added += table.add(hashes[s:s + CHUNK], [len(seqs[i]) for i in ids[s:s + CHUNK]],
                           x[s:s + CHUNK])
    store.write_ids(run, ids, hashes)
    table.optimize()
    return {"proteins": len(ids), "added": added, "dim": int(x.shape[1])}


def stored_vectors(table: ModelTable, ids: Sequence[str], sequences: Sequence[str]
                   ) -> np.ndarray:
    """The stored vectors of these sequences (queries of an external model).

    Raises:
        StoreError: a sequence the model holds no vector for, named by its id.
    """
    hashes = [seq_hash(s) for s in sequences]
    found = table.lookup(hashes)
    missing = [i for i, h in zip(ids, hashes) if h not in found]
    if missing:
        raise StoreError(f"{len(missing)} query protein(s) have no {table.name} vector in the "
                         f"store, e.g. {missing[:3]}: an imported model cannot embed new "
                         "sequences — import their vectors first (`mtdp store import`)")
    return np.stack([found[h] for h in hashes])
