"""Protein pools drawn from the DeepLoc 2.0 Swiss-Prot set, the one rule every demo, preset,
sweep and test uses: homology partitions 0-3 are the pool for distillation; partition 4 stays
unseen (held-out proteins for checks), so a student is never trained on them.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..io import data_dir as default_data_dir
from ..sequences import DEFAULT_MAX_LEN, prepare
from .sources import DEEPLOC2

#: Partitions proteins are drawn from for distillation; partition 4 is held out.
POOL_PARTITIONS = (0, 1, 2, 3)
HELD_OUT_PARTITION = 4


def read_deeploc2(partitions: tuple[int, ...] = POOL_PARTITIONS,
                  data_dir: str | os.PathLike | None = None):
    """The DeepLoc 2.0 rows of ``partitions`` in file order, as a ``pandas.DataFrame``
    (``accession, sequence, label, partition, kingdom, membrane``).

    Raises:
        FileNotFoundError: the data file is missing, naming where it was looked for.
    """
    import pandas as pd

    path = Path(data_dir or default_data_dir()) / DEEPLOC2
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: set MTDP_DATA_DIR to the data folder (see "
                                "its README), or get DeepLoc 2.0 with `mtdp data fetch`")
    df = pd.read_csv(path)
    return df[df.partition.isin(partitions)]


def first_proteins(n: int, max_len: int | None = DEFAULT_MAX_LEN,
                   partitions: tuple[int, ...] = POOL_PARTITIONS,
                   data_dir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """The first ``n`` proteins of ``partitions`` in file order: ``(ids, sequences)``,
    prepared to ``max_len`` (``None``: raw, as read)."""
    df = read_deeploc2(partitions, data_dir).head(n)
    seqs = list(df.sequence) if max_len is None else \
        [prepare(s, max_len=max_len) for s in df.sequence]
    return list(df.accession), seqs


def sample_proteins(n: int, seed: int, partitions: tuple[int, ...] = (HELD_OUT_PARTITION,),
                    data_dir: str | os.PathLike | None = None):
    """A seeded random sample of ``n`` rows of ``partitions`` (``DataFrame.sample``).

    Raises:
        ValueError: the partitions hold fewer than ``n`` proteins.
    """
    df = read_deeploc2(partitions, data_dir)
    if len(df) < n:
        raise ValueError(f"partition(s) {partitions} hold only {len(df)} proteins, asked for {n}")
    return df.sample(n, random_state=seed)


def distillation_pool(n: int, max_len: int, seed: int, exclude: set[str] = frozenset(),
                      data_dir: str | os.PathLike | None = None):
    """``n`` pool proteins (partitions 0-3, seeded sample; ``0``: all) none of which is in ``exclude``
    (sequences prepared at the benchmark's 1,000 residues, e.g. every benchmark protein):
    a ``DataFrame`` with ``accession`` and ``prepared`` (cut to ``max_len``)."""
    df = read_deeploc2(POOL_PARTITIONS, data_dir)[["accession", "sequence", "partition"]].copy()
    df["prepared"] = [prepare(s, max_len=max_len) for s in df.sequence]
    # Compare on the full prepared sequence (tasks truncate at 1,000 residues).
    full = [prepare(s, max_len=DEFAULT_MAX_LEN) for s in df.sequence]
    df = df[[s not in exclude for s in full]]
    if n == 0:  # every eligible protein, in a seeded order
        return df.sample(frac=1.0, random_state=seed)
    if len(df) < n:
        raise ValueError(f"only {len(df)} pool proteins left after excluding task proteins")
    return df.sample(n, random_state=seed)
