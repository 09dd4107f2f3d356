"""The benchmark tasks: loaders that know their canonical public source and read a local copy.

Every loader reads files under ``$MTDP_DATA_DIR`` (or a ``data_dir`` argument), passes each
sequence through :func:`mtdp.sequences.prepare` (validate, clean, truncate to 1,000 residues)
and removes duplicate sequences *after* truncation (identical inputs in train and test folds
would leak). What was dropped, and whether the local copy is partial or non-canonical, is
recorded in :attr:`Task.notes` and shown in every report.

=============  ============  ===================================================================
task           kind          data
=============  ============  ===================================================================
membrane       binary        DeepLoc 2.0 Swiss-Prot set, ``membrane`` column
localization   multiclass    DeepLoc 2.0 rows with a single label (10 classes)
go             multilabel    GO molecular function, 16,000 Swiss-Prot 2014 proteins (terms
                             propagated; MMseqs2 30 % clusters in 10 partitions)
go_pdb         multilabel    DeepFRI nrPDB-GO, molecular function (``go_pdb_bp``,
                             ``go_pdb_cc``: the other branches); not in the shared data
meltome        regression    FLIP Meltome *mixed* split, validation + test rows (°C)
esol           regression    eSOL solubility, train + test (fraction soluble, 0..1)
deepsol        binary        DeepSol validation + test sets (extra task)
=============  ============  ===================================================================

Tasks whose data carry homology partitions (DeepLoc 2.0 ``partition``: 5; GO ``partition``: 10,
whole MMseqs2 clusters) keep them in :attr:`Task.partitions`; ``--split homology`` folds follow
them, so no cluster is on both sides of a fold.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..io import data_dir as default_data_dir
from ..sequences import DEFAULT_MAX_LEN, SequenceError, prepare
from .sources import (DEEPLOC2_SOURCE, DEEPSOL_SOURCE, ESOL_SOURCE, GO_ANNOT, GO_FASTA,
                      GO_SOURCE, GO_SWISSPROT_SOURCE, MELTOME_SOURCE, DataSource, first_present,
                      go_reader, read_deeploc2, read_deepsol, read_esol, read_go_swissprot,
                      read_meltome)

KINDS = ("binary", "multiclass", "multilabel", "regression")
#: The primary metric of each task kind (the one in the figure and the headline table).
PRIMARY_METRIC = {"binary": "f1_macro", "multiclass": "accuracy", "multilabel": "fmax",
                  "regression": "spearman"}


@dataclass
class Task:
    """A loaded task: prepared, de-duplicated sequences and their labels.

    ``labels`` is int64 ``[N]`` (binary / multiclass, indices into ``classes``), float32
    ``[N, T]`` 0/1 (multilabel, columns = ``classes``) or float32 ``[N]`` (regression).
    ``partitions``: int ``[N]`` homology partition of each protein, where the data have them.
    """

    name: str
    kind: str
    description: str
    ids: list[str]
    sequences: list[str]
    labels: np.ndarray
    classes: list[str] | None
    source: DataSource
    notes: list[str] = field(default_factory=list)
    max_len: int = DEFAULT_MAX_LEN
    partitions: np.ndarray | None = None
    #: What the partitions are (for reports), e.g. "DeepLoc 2.0 homology partitions".
    partition_info: str = ""

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.kind]

    @property
    def partial(self) -> bool:
        """True when the local data is not the canonical full set."""
        return bool(self.source.caveat)

    def data_hash(self) -> str:
        """SHA-256 over the prepared sequences in order (the embedding cache key)."""
        h = hashlib.sha256(f"max_len={self.max_len}\n".encode())
        for s in self.sequences:
            h.update(s.encode())
            h.update(b"\n")
        return h.hexdigest()


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its kind, source and the function reading raw rows."""

    name: str
    kind: str
    description: str
    source: DataSource
    #: ``reader(data_dir) -> (ids, raw_sequences, labels, classes, partitions)``; labels per
    #: row are an int/str class, a float, or a list of terms (multilabel); partitions: the
    #: rows' homology partitions, or None.
    reader: Callable[[Path], tuple[list[str], list[str], list, list[str] | None,
                                   list[int] | None]]
    #: What the reader's partitions are ("" = the data have no homology information).
    partition_info: str = ""


# ---- readers -------------------------------------------------------------------------------

DEEPLOC2_PARTS = ("DeepLoc 2.0 homology partitions (5; sequences of different partitions "
                  "share < 30 % identity)")
GO_PARTS = ("MMseqs2 clusters (30 % identity, 80 % coverage) dealt whole to 10 partitions")

TASKS: dict[str, TaskSpec] = {
    "membrane": TaskSpec("membrane", "binary", "membrane-bound vs water-soluble (DeepLoc 2.0)",
                         DEEPLOC2_SOURCE, lambda d: read_deeploc2(d, "membrane"),
                         DEEPLOC2_PARTS),
    "localization": TaskSpec("localization", "multiclass",
                             "10-class subcellular localisation (DeepLoc 2.0 single-label)",
                             DEEPLOC2_SOURCE, lambda d: read_deeploc2(d, "localization"),
                             DEEPLOC2_PARTS),
    "go": TaskSpec("go", "multilabel",
                   "GO molecular function (Swiss-Prot 2014, propagated, incl. IEA)",
                   GO_SWISSPROT_SOURCE, read_go_swissprot, GO_PARTS),
    "meltome": TaskSpec("meltome", "regression", "melting temperature, °C (FLIP Meltome mixed)",
                        MELTOME_SOURCE, read_meltome),
    "esol": TaskSpec("esol", "regression", "solubility fraction (eSOL)", ESOL_SOURCE,
                     read_esol),
    "deepsol": TaskSpec("deepsol", "binary", "soluble vs insoluble (DeepSol, extra)",
                        DEEPSOL_SOURCE, read_deepsol),
    "go_pdb": TaskSpec("go_pdb", "multilabel", "GO molecular function (DeepFRI PDB set)",
                       GO_SOURCE, go_reader("mf", "go_pdb")),
    "go_pdb_bp": TaskSpec("go_pdb_bp", "multilabel", "GO biological process (DeepFRI PDB set)",
                          GO_SOURCE, go_reader("bp", "go_pdb_bp")),
    "go_pdb_cc": TaskSpec("go_pdb_cc", "multilabel", "GO cellular component (DeepFRI PDB set)",
                          GO_SOURCE, go_reader("cc", "go_pdb_cc")),
}
#: What ``--tasks all`` means: the paper's five plus DeepSol.
DEFAULT_TASKS = ("membrane", "localization", "go", "meltome", "esol", "deepsol")


def resolve_task_names(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"all"`` or a comma list → task names, checked against :data:`TASKS`."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list(DEFAULT_TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}: choose from {sorted(TASKS)} or 'all'")
    return names


def available_tasks(data_dir: str | os.PathLike | None = None,
                    names=DEFAULT_TASKS) -> list[str]:
    """Names of the tasks (default: the default tasks) whose files are present."""
    d = Path(data_dir) if data_dir else default_data_dir()
    out = []
    for n in names:
        spec = TASKS[n]
        files = spec.source.files
        if n.startswith("go_pdb"):
            files = (first_present(d, GO_ANNOT), first_present(d, GO_FASTA))
        if all((d / f).is_file() for f in files):
            out.append(n)
    return out


def _checksum_notes(data_dir: Path, source: DataSource) -> list[str]:
    notes = []
    for rel, expected in source.sha256.items():
        p = data_dir / rel
        if p.is_file():
            h = hashlib.sha256(p.read_bytes()).hexdigest()
            if h != expected:
                notes.append(f"{rel}: SHA-256 {h[:12]}… differs from the copy this benchmark "
                             f"was developed on ({expected[:12]}…)")
    return notes


def load_task(name: str, data_dir: str | os.PathLike | None = None, *,
              max_proteins: int | None = None, seed: int = 42, min_class_count: int = 10,
              max_len: int = DEFAULT_MAX_LEN) -> Task:
    """Load, prepare and de-duplicate one task.

    Args:
        max_proteins: keep a seeded random subset of this many proteins (for speed); noted.
        min_class_count: drop classes (or GO terms) with fewer members than this (stratified
            10-fold CV needs at least one per fold); noted.
        max_len: truncation length (the paper's 1,000).

    Raises:
        TaskUnavailable: the data files are missing (message says where to get them).
        ValueError: unknown task or malformed file (message names the file and line).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose from {sorted(TASKS)}")
    spec = TASKS[name]
    d = Path(data_dir) if data_dir else default_data_dir()
    ids, raw, labels, classes, parts = spec.reader(d)
    notes: list[str] = []
    if spec.source.caveat:
        notes.append(spec.source.caveat)
    notes += _checksum_notes(d, spec.source)
    part_of = dict(zip(ids, parts)) if parts is not None else None
    prepared = _prepare_rows(ids, raw, labels, spec.kind, max_len, notes)
    if max_proteins is not None and len(prepared) > max_proteins:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(prepared), size=max_proteins, replace=False))
        notes.append(f"SUBSAMPLED: {max_proteins} of {len(prepared)} proteins (seed {seed})")
        prepared = [prepared[i] for i in keep]
    out_ids = [p[0] for p in prepared]
    seqs = [p[1] for p in prepared]
    ys = [p[2] for p in prepared]
    info = spec.partition_info if part_of is not None else ""

    def partitions(kept_ids: list[str]) -> np.ndarray | None:
        return (np.asarray([part_of[i] for i in kept_ids], dtype=np.int64)
                if part_of is not None else None)

    if spec.kind == "regression":
        return Task(name, spec.kind, spec.description, out_ids, seqs,
                    np.asarray(ys, dtype=np.float32), None, spec.source, notes, max_len,
                    partitions(out_ids), info)
    build = _multilabel if spec.kind == "multilabel" else _classes
    keep, y_arr, kept = build(name, ys, classes, min_class_count, notes)
    kept_ids = [out_ids[i] for i in keep]
    return Task(name, spec.kind, spec.description, kept_ids, [seqs[i] for i in keep], y_arr,
                kept, spec.source, notes, max_len, partitions(kept_ids), info)


def _prepare_rows(ids: list[str], raw: list[str], labels: list, kind: str, max_len: int,
                  notes: list[str]) -> list[tuple[str, str, object]]:
    """Every sequence prepared exactly as the models see it (invalid ones counted in
    ``notes``, not hidden), then identical sequences merged (:func:`_dedupe`)."""
    prepared: list[tuple[str, str, object]] = []
    invalid: list[str] = []
    for i, (pid, s, y) in enumerate(zip(ids, raw, labels), 1):
        try:
            prepared.append((pid, prepare(s, max_len=max_len, seq_id=pid, record=i), y))
        except SequenceError as exc:
            invalid.append(str(exc))
    if invalid:
        notes.append(f"{len(invalid)} invalid sequence(s) dropped, e.g. {invalid[0]}")
    prepared, dup_note = _dedupe(prepared, kind)
    if dup_note:
        notes.append(dup_note)
    return prepared


def _multilabel(name: str, ys: list, classes: list[str] | None, min_count: int,
                notes: list[str]) -> tuple[list[int], np.ndarray, list[str]]:
    """Rows kept, their 0/1 label matrix over the terms with >= ``min_count`` proteins, and
    those terms (proteins left without a kept term are dropped; both noted)."""
    assert classes is not None
    col = {t: j for j, t in enumerate(classes)}
    y_arr = np.zeros((len(ys), len(classes)), dtype=np.float32)
    for i, terms in enumerate(ys):
        y_arr[i, [col[t] for t in terms]] = 1.0
    keep_terms = np.flatnonzero(y_arr.sum(0) >= min_count)
    if len(keep_terms) < len(classes):
        notes.append(f"{len(classes) - len(keep_terms)} of {len(classes)} GO terms with "
                     f"< {min_count} proteins dropped")
    y_arr = y_arr[:, keep_terms]
    has = y_arr.sum(1) > 0
    if not has.all():
        notes.append(f"{int((~has).sum())} protein(s) left without a kept term dropped")
    idx = np.flatnonzero(has)
    return list(idx), y_arr[idx], [classes[j] for j in keep_terms]


def _classes(name: str, ys: list, classes: list[str] | None, min_count: int,
             notes: list[str]) -> tuple[list[int], np.ndarray, list[str]]:
    """Rows kept, their class indices and the classes with >= ``min_count`` proteins
    (binary / multiclass labels are class names or indices into ``classes``)."""
    assert classes is not None
    names = [classes[y] if isinstance(y, (int, np.integer)) else str(y) for y in ys]
    counts = {c: names.count(c) for c in classes}
    small = [c for c in classes if counts[c] < min_count]
    if small:
        notes.append(f"class(es) with < {min_count} proteins dropped: "
                     + ", ".join(f"{c} ({counts[c]})" for c in small))
    kept = [c for c in classes if c not in small]
    if len(kept) < 2:
        raise ValueError(f"task {name!r}: fewer than 2 classes with >= {min_count} "
                         f"proteins (counts {counts}); raise max_proteins")
    col = {c: j for j, c in enumerate(kept)}
    idx = [i for i, c in enumerate(names) if c in col]
    return idx, np.asarray([col[names[i]] for i in idx], dtype=np.int64), kept


def _dedupe(prepared: list[tuple[str, str, object]], kind: str
            ) -> tuple[list[tuple[str, str, object]], str]:
    """Merge records whose prepared sequences are identical.

    Regression: the mean label. Multilabel: the union of terms. Classification: one record if
    the labels agree, none if they conflict (no right answer to learn).
    """
    groups: dict[str, list[int]] = {}
    for i, (_, s, _) in enumerate(prepared):
        groups.setdefault(s, []).append(i)
    if len(groups) == len(prepared):
        return prepared, ""
    out, conflicts = [], 0
    for s, members in groups.items():
        first = prepared[members[0]]
        if len(members) == 1:
            out.append(first)
            continue
        ys = [prepared[i][2] for i in members]
        if kind == "regression":
            out.append((first[0], s, float(np.mean(ys))))
        elif kind == "multilabel":
            out.append((first[0], s, sorted({t for y in ys for t in y})))  # type: ignore
        elif all(y == ys[0] for y in ys):
            out.append(first)
        else:
            conflicts += 1
    removed = len(prepared) - len(out)
    how = {"regression": "labels averaged", "multilabel": "terms merged"}.get(
        kind, f"{conflicts} with conflicting labels dropped entirely")
    return out, (f"{removed} duplicate sequence record(s) removed after truncation to the "
                 f"model length ({how})")
