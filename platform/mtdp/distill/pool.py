"""The distillation pool: which unlabelled proteins the teachers label for a run. A seeded
order of a FASTA (the default: the shared Swiss-Prot 2014 pool, 100,000 proteins with every
benchmark sequence removed), of which a run takes the first ``n``: a larger run's pool holds
a smaller one's, so labels already in the store are reused."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..io import data_dir, sha256_file
from ..sequences import read_fasta, write_fasta

#: The shared pool, relative to the data folder (see its README).
SWISSPROT_POOL = "pool/swissprot2014_pool100k.fasta.gz"
#: SHA-256 of that file as published (a different file is refused: its order would differ).
SWISSPROT_POOL_SHA256 = "44426d88c3102340901c884de8c13ddcead7ccc20041ea8ae0b993e5f8b29e93"


def pool_source(path: str | os.PathLike | None = None) -> Path:
    """The pool FASTA: ``path``, or the shared Swiss-Prot pool in the data folder."""
    p = Path(path) if path else data_dir() / SWISSPROT_POOL
    if not p.is_file():
        raise FileNotFoundError(f"distillation pool {p} not found: set MTDP_DATA_DIR to the data "
                                "folder (its pool/ holds the Swiss-Prot 2014 pool) or give a "
                                "FASTA of your own proteins")
    if not path and sha256_file(p) != SWISSPROT_POOL_SHA256:
        raise ValueError(f"{p} is not the published Swiss-Prot 2014 pool (SHA-256 differs): "
                         "its proteins, and so a seed's selection, would not be the same")
    return p


def write_pool(n: int, seed: int, out: str | os.PathLike,
               source: str | os.PathLike | None = None) -> tuple[Path, int, int]:
    """The first ``n`` proteins (``0``: all) of a ``seed``-ed order of the pool FASTA, written
    to ``out`` once (an existing file of the same selection is kept, so a resumed precompute
    sees the very same input). Returns the path, proteins and residues."""
    src = pool_source(source)
    records = read_fasta(src)
    if n > len(records):
        raise ValueError(f"pool {src} holds {len(records):,} proteins, {n:,} asked for")
    order = np.random.default_rng(seed).permutation(len(records))[:n or len(records)]
    chosen = [(records[i].id, records[i].sequence) for i in order]
    digest = hashlib.sha256("".join(f">{a}\n{s}\n" for a, s in chosen).encode()).hexdigest()
    out = Path(out)
    tag = out.with_name(out.name + ".sha256")
    if not (out.is_file() and tag.is_file() and tag.read_text().strip() == digest):
        write_fasta(chosen, out)
        tag.write_text(digest + "\n")
    return out, len(chosen), sum(len(s) for _, s in chosen)
