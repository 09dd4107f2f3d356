"""The teacher-embedding dataset contract shared by precompute (writer) and distil (reader).

A dataset is one directory::

    RUN_DIR/
      manifest.json          # Manifest below; written last, so its presence means complete
      data/*.parquet         # rows: id, sequence, length, split, t_<teacher> ...

Columns: ``id`` (string, unique), ``sequence`` (prepared: validated, cleaned, truncated to
``max_len``), ``length`` (int32), ``split`` (``train``/``validation``, :func:`split_of`), and
one ``fixed_size_list<float16>[dim]`` column per teacher named :func:`teacher_column`, and,
for teachers computed with per-residue output, a ``list<fixed_size_list<float16>[dim]>``
column named :func:`residue_column` (one vector per residue, in sequence order).
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
from typing import Any

from . import __version__

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
    format: str = FORMAT
    mtdp_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

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
        path = Path(run_dir) / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

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
