"""The teacher-embedding dataset contract shared by precompute (writer) and distil (reader):
its layout, manifest, the shard writer and the validated readers.

A dataset is one directory::

    RUN_DIR/
      manifest.json          # Manifest below; written last, so its presence means complete
      data/*.parquet         # rows: id, sequence, length, split, t_<teacher> ...

Columns: ``id`` (string, unique), ``sequence`` (prepared: validated, cleaned, truncated to
``max_len``), ``length`` (int32), ``split`` (``train``/``validation``, :func:`split_of`), and
one ``fixed_size_list<float16>[dim]`` column per teacher named :func:`teacher_column`, and,
for teachers computed with per-residue output, a ``list<fixed_size_list<float16>[dim]>``
column named :func:`residue_column` (one vector per residue, in sequence order, or per window
of ``residue_window`` residues).
Per-feature mean/std of each teacher over the *train* rows (per-residue: over the train rows'
residues) are stored in the manifest so the distiller can standardise teacher features.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .io import atomic_path, sha256_file, write_text

FORMAT = "mtdp-teacher-embeddings"
MANIFEST_FILE = "manifest.json"
DATA_DIR = "data"
#: Fraction of proteins held out for validation, by stable hash of the id.
DEFAULT_VALIDATION_FRACTION = 0.05


class ManifestMismatch(ValueError):
    """A teacher dataset does not match what the reader asked for."""


def teacher_column(name: str) -> str:
    """Parquet column for a teacher's embeddings (``t_`` + name with non-word chars as ``_``)."""
    return "t_" + re.sub(r"\W", "_", name)


def residue_column(name: str) -> str:
    """Parquet column for a teacher's per-residue states (``r_`` + name, as above)."""
    return "r_" + re.sub(r"\W", "_", name)


def split_of(seq_id: str, validation_fraction: float = DEFAULT_VALIDATION_FRACTION) -> str:
    """``train`` or ``validation`` from a stable hash of the id: a protein never changes side
    across reruns, machines or added data."""
    bucket = int.from_bytes(hashlib.sha1(seq_id.encode()).digest()[:8], "big") / 2.0 ** 64
    return "validation" if bucket < validation_fraction else "train"


@dataclass
class TeacherEntry:
    """One teacher in a dataset: identity, provenance and feature statistics."""

    name: str
    dim: int
    source: str
    column: str = ""
    pretrained: bool = False
    sha256: str | None = None
    #: Per-feature mean / std over the train split (standardisation for distillation).
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    #: Per-residue states column ("" when the dataset has none for this teacher), and their
    #: per-feature mean / std over the train split's residues.
    residue_column: str = ""
    residue_mean: list[float] = field(default_factory=list)
    residue_std: list[float] = field(default_factory=list)
    #: The per-residue column holds means over windows of this many residues
    #: (:mod:`mtdp.residue_windows`; 1: one vector per residue).
    residue_window: int = 1

    def __post_init__(self) -> None:
        self.column = self.column or teacher_column(self.name)


@dataclass
class Manifest:
    """Description of a complete teacher-embedding dataset."""

    teachers: list[TeacherEntry]
    max_len: int
    rows: int
    inputs: list[str] = field(default_factory=list)
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    split_counts: dict[str, int] = field(default_factory=dict)
    #: How proteins longer than ``max_len`` were cut: ``truncate`` or ``crop``.
    length_rule: str = "truncate"
    format: str = FORMAT
    mtdp_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    #: Data file name → its record when written (``rows``, ``bytes``, ``sha256``).
    files: dict[str, dict] = field(default_factory=dict)

    def teacher(self, name: str) -> TeacherEntry:
        for t in self.teachers:
            if t.name == name:
                return t
        raise ManifestMismatch(f"teacher {name!r} is not in this dataset (has "
                               f"{[t.name for t in self.teachers]})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write ``manifest.json`` atomically (its presence marks the dataset complete)."""
        return write_text(Path(run_dir) / MANIFEST_FILE, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "Manifest":
        path = Path(run_dir) / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished teacher "
                                    "dataset (run jobs/precompute_teachers.py, or rerun it to "
                                    "resume an interrupted run)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestMismatch(f"{path} is not valid JSON: {exc}") from exc
        if d.get("format") != FORMAT:
            raise ManifestMismatch(f"{path}: format {d.get('format')!r}, expected {FORMAT!r}")
        d["teachers"] = [TeacherEntry(**t) for t in d["teachers"]]
        return cls(**d)

    def check(self, *, teachers: list[str] | None = None, max_len: int | None = None) -> None:
        """Refuse a dataset that does not match the reader's expectations, saying why."""
        if max_len is not None and max_len != self.max_len:
            raise ManifestMismatch(f"dataset was truncated to {self.max_len} residues but "
                                   f"{max_len} was asked for; recompute or change max_len")
        for name in teachers or []:
            self.teacher(name)


def data_files(run_dir: str | os.PathLike) -> list[str]:
    """The dataset's Parquet files, sorted."""
    return sorted(str(p) for p in (Path(run_dir) / DATA_DIR).glob("*.parquet"))


# ---- writing and validated reading ---------------------------------------------------------
def write_shard(table, path: str | os.PathLike,
                before_commit: Callable[[dict], None] | None = None) -> dict:
    """Write one data file of the dataset atomically (zstd Parquet under a temporary name no
    ``*.parquet`` glob sees, then renamed): a reader never meets a half-written shard.

    Returns the file's record ``{rows, bytes, sha256}``; ``before_commit(record)`` runs after
    the data is written and before the rename (to persist the record first)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        record = {"rows": table.num_rows, "bytes": tmp.stat().st_size,
                  "sha256": sha256_file(tmp)}
        if before_commit is not None:
            before_commit(record)
    return record


def verify_shard(path: str | os.PathLike, record: dict | None = None,
                 checksum: bool = True) -> str | None:
    """Why the data file ``path`` is not the one committed (``None``: it is): missing,
    unreadable as Parquet, or — against its ``record`` from :func:`write_shard` — a different
    row count, size or SHA-256 (``checksum=False`` skips the hash)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        return "missing"
    try:
        rows = pq.ParquetFile(p).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        return f"not a readable Parquet file ({exc})"
    if record:
        if rows != record.get("rows", rows):
            return f"{rows} rows, {record['rows']} were written"
        if p.stat().st_size != record.get("bytes", p.stat().st_size):
            return f"{p.stat().st_size} bytes, {record['bytes']} were written"
        if checksum and record.get("sha256") and sha256_file(p) != record["sha256"]:
            return "its SHA-256 differs from the one recorded when it was written"
    return None


def open_teacher_dataset(run_dir: str | os.PathLike, teachers: list[str] | None = None,
                         max_len: int | None = None, verify: bool = True
                         ) -> tuple[Manifest, list[str]]:
    """Validate a teacher dataset for a reader; returns its manifest and data files. Every
    data file must be readable and match its record in the manifest (rows, size and, with
    ``verify``, SHA-256).

    Raises:
        FileNotFoundError: no manifest (the run is unfinished: rerun precompute to resume).
        ManifestMismatch: a different truncation length, a missing teacher, a damaged data
            file (named), data files that do not add up to the manifest's row count, or a
            column of the wrong dimension.
    """
    import pyarrow.parquet as pq

    manifest = Manifest.load(run_dir)
    manifest.check(teachers=teachers, max_len=max_len)
    files = data_files(run_dir)
    for f in files:
        problem = verify_shard(f, manifest.files.get(Path(f).name), checksum=verify)
        if problem:
            raise ManifestMismatch(f"{f} is damaged: {problem}. Rerun the precompute with the "
                                   "same arguments: it names and recomputes damaged shards")
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if rows != manifest.rows:
        raise ManifestMismatch(f"{run_dir}: data files hold {rows} rows but the manifest says "
                               f"{manifest.rows}; files were added or removed after the run")
    if files:
        schema = pq.read_schema(files[0])
        for name in teachers or [t.name for t in manifest.teachers]:
            entry = manifest.teacher(name)
            if entry.column not in schema.names:
                raise ManifestMismatch(f"{files[0]} has no column {entry.column!r} for teacher "
                                       f"{name!r}")
            size = getattr(schema.field(entry.column).type, "list_size", None)
            if size != entry.dim:
                raise ManifestMismatch(f"column {entry.column!r} has dimension {size}, manifest "
                                       f"says {entry.dim}")
    return manifest, files


def dataset_columns(manifest: Manifest, teachers: list[str] | None = None,
                    residue_teachers: list[str] | None = None) -> list[str]:
    """Columns a reader takes: id, sequence, length, split, the teachers' embedding columns
    (all teachers by default) and the per-residue columns of ``residue_teachers``."""
    names = teachers or [t.name for t in manifest.teachers]
    cols = ["id", "sequence", "length", "split"] + [manifest.teacher(n).column for n in names]
    for name in residue_teachers or []:
        col = manifest.teacher(name).residue_column
        if not col:
            raise ManifestMismatch(f"the dataset has no per-residue states for teacher "
                                   f"{name!r} (rerun precompute with --per-residue {name})")
        cols.append(col)
    return cols


def load_teacher_dataset(run_dir: str | os.PathLike, teachers: list[str] | None = None,
                         max_len: int | None = None, *, split: str | None = None,
                         residue_teachers: list[str] | None = None, limit: int | None = None):
    """The dataset as a ``ray.data.Dataset`` after validating it (:func:`open_teacher_dataset`);
    columns from :func:`dataset_columns`; ``split`` keeps only ``train`` or ``validation`` rows,
    ``limit`` at most that many."""
    import ray.data

    manifest, files = open_teacher_dataset(run_dir, teachers, max_len)
    if not files:
        raise ManifestMismatch(f"{run_dir}: the dataset has no data files")
    ds = ray.data.read_parquet(files, columns=dataset_columns(manifest, teachers,
                                                              residue_teachers),
                               override_num_blocks=len(files))
    if split is not None:
        ds = ds.filter(expr=f"split == '{split}'")
    return ds.limit(limit) if limit is not None else ds


def read_teacher_table(run_dir: str | os.PathLike, teachers: list[str] | None = None,
                       max_len: int | None = None, *, split: str | None = None):
    """The dataset as one ``pyarrow.Table`` (small data / single process), validated like
    :func:`load_teacher_dataset`, rows sorted by id."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifest, files = open_teacher_dataset(run_dir, teachers, max_len)
    cols = dataset_columns(manifest, teachers)
    tables = [pq.read_table(f, columns=cols) for f in files]
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in cols})
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table.sort_by([("id", "ascending")])


def teacher_matrix(table, manifest: Manifest, teacher: str) -> np.ndarray:
    """One teacher's embeddings from a table as a float32 ``[N, dim]`` array."""
    entry = manifest.teacher(teacher)
    flat = table[entry.column].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(-1, entry.dim)
