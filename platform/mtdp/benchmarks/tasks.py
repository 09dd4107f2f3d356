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
go             multilabel    DeepFRI PDB GO annotations, molecular function (``go_bp``,
                             ``go_cc``: the other branches); not shipped in the shared data
meltome        regression    FLIP Meltome *mixed* split, validation + test rows (°C)
esol           regression    eSOL solubility, train + test (fraction soluble, 0..1)
deepsol        binary        DeepSol validation + test sets (extra task)
=============  ============  ===================================================================
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..sequences import DEFAULT_MAX_LEN, SequenceError, iter_fasta, prepare

KINDS = ("binary", "multiclass", "multilabel", "regression")
#: The primary metric of each task kind (the one in the figure and the headline table).
PRIMARY_METRIC = {"binary": "f1_macro", "multiclass": "accuracy", "multilabel": "fmax",
                  "regression": "spearman"}


class TaskUnavailable(RuntimeError):
    """The task's data files are not in the data directory (the message says where to get
    them). Benchmarks skip such tasks with this message; nothing is ever substituted."""


@dataclass(frozen=True)
class DataSource:
    """Where a task's data comes from, for real users and for the report."""

    #: Canonical download location(s) of the full, official data.
    url: str
    citation: str
    licence: str
    #: Files the loader reads, relative to the data directory.
    files: tuple[str, ...]
    #: SHA-256 of the local copies this project was developed against (file → hex), where
    #: known. A different checksum is reported in the notes, not an error: a user may hold the
    #: canonical full version.
    sha256: dict[str, str] = field(default_factory=dict)
    #: How the local copy differs from the canonical data (empty if it is canonical).
    caveat: str = ""


@dataclass
class Task:
    """A loaded task: prepared, de-duplicated sequences and their labels.

    ``labels`` is int64 ``[N]`` (binary / multiclass, indices into ``classes``), float32
    ``[N, T]`` 0/1 (multilabel, columns = ``classes``) or float32 ``[N]`` (regression).
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
    #: ``reader(data_dir) -> (ids, raw_sequences, labels, classes)``; labels per row are an
    #: int/str class, a float, or a list of terms (multilabel).
    reader: Callable[[Path], tuple[list[str], list[str], list, list[str] | None]]


# ---- readers -------------------------------------------------------------------------------

def _require(data_dir: Path, spec_name: str, source: DataSource, files: tuple[str, ...]
             ) -> list[Path]:
    paths = [data_dir / f for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TaskUnavailable(
            f"task {spec_name!r} skipped: missing {', '.join(missing)}. Get the data from "
            f"{source.url} ({source.citation}) and place it under {data_dir} as "
            f"{', '.join(files)}")
    return paths


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    # Some copies have spaces after commas in the header (FLIP: "sequence, melting point").
    return [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]


def _column(rows: list[dict[str, str]], name: str, path: Path) -> list[str]:
    if rows and name not in rows[0]:
        raise ValueError(f"{path}: expected a column {name!r}, found {sorted(rows[0])}")
    return [r[name] for r in rows]


DEEPLOC2 = "deeploc2/swissprot_train_val_5partitions.csv"
DEEPLOC2_SOURCE = DataSource(
    url="https://services.healthtech.dtu.dk/services/DeepLoc-2.0/ "
        "(Swissprot_Train_Validation_dataset.csv)",
    citation="Thumuluri et al., DeepLoc 2.0, Nucleic Acids Res. 50:W228 (2022)",
    licence="DeepLoc 2.0 data, DTU Health Tech (academic use; see the service page)",
    files=(DEEPLOC2,),
    sha256={DEEPLOC2: "e62ce827ee644ba6bd034e6e9885943ee287dcbc9b9b4efa519875117374b872"},
    caveat="")


def _read_deeploc2(data_dir: Path, which: str):
    (path,) = _require(data_dir, which, DEEPLOC2_SOURCE, DEEPLOC2_SOURCE.files)
    rows = _read_csv(path)
    ids, seqs = _column(rows, "accession", path), _column(rows, "sequence", path)
    if which == "membrane":
        labels = [int(float(v)) for v in _column(rows, "membrane", path)]
        return ids, seqs, labels, ["soluble", "membrane"]
    keep = [i for i, lab in enumerate(_column(rows, "label", path)) if "|" not in lab]
    labels = [rows[i]["label"] for i in keep]
    return [ids[i] for i in keep], [seqs[i] for i in keep], labels, sorted(set(labels))


MELTOME_FILES = ("meltome/flip_mixed_val.csv", "meltome/flip_mixed_test.csv")
MELTOME_SOURCE = DataSource(
    url="https://github.com/J-SNACKKB/FLIP/tree/main/splits/meltome (splits.zip: mixed_split.csv)",
    citation="Dallago et al., FLIP, NeurIPS Datasets and Benchmarks (2021); data: Jarzab et al., "
             "Meltome atlas, Nat. Methods 17:495 (2020)",
    licence="AFL-3.0 (FLIP)",
    files=MELTOME_FILES,
    sha256={MELTOME_FILES[0]: "94b8b8838250323ee70cbb53f0e2c7d9d6d5a6c35d71cd0e9289ce5996f0b6f0",
            MELTOME_FILES[1]: "e21f8b494bd6ddf70f5a7c02da531a6ece0ffd0dc348182b2bb837043838caf2"},
    caveat="PARTIAL: FLIP Meltome mixed split validation + test rows only (the FLIP train "
           "split is not in the local data); the paper cross-validates the whole mixed set")


def _read_meltome(data_dir: Path):
    ids, seqs, labels = [], [], []
    for path in _require(data_dir, "meltome", MELTOME_SOURCE, MELTOME_FILES):
        rows = _read_csv(path)
        part = path.stem.replace("flip_mixed_", "")
        for i, (s, t) in enumerate(zip(_column(rows, "sequence", path),
                                       _column(rows, "melting point", path))):
            ids.append(f"meltome_{part}_{i + 1}")
            seqs.append(s)
            labels.append(float(t))
    return ids, seqs, labels, None


ESOL_FILES = ("solubility/esol/eSol_train.csv", "solubility/esol/eSol_test.csv")
ESOL_SOURCE = DataSource(
    url="https://github.com/jcchan23/GraphSol (Data/eSol_train.csv, Data/eSol_test.csv); "
        "original: http://www.tanpaku.org/tp-esol/",
    citation="Niwa et al., PNAS 106:4201 (2009); split: Chen et al., GraphSol, "
             "J. Cheminform. 13:7 (2021)",
    licence="MIT (GraphSol repository)",
    files=ESOL_FILES,
    sha256={ESOL_FILES[0]: "ef6ac5383f56ebcc7d8751534e35e6856fdbe7f48ee47c3f56fdef850bccb5f0",
            ESOL_FILES[1]: "26b149a8fc18ff0e2299b43687613c39341625e4a6d71392f50bc24387678e47"},
    caveat="")


def _read_esol(data_dir: Path):
    ids, seqs, labels = [], [], []
    for path in _require(data_dir, "esol", ESOL_SOURCE, ESOL_FILES):
        rows = _read_csv(path)
        for g, s, y in zip(_column(rows, "gene", path), _column(rows, "sequence", path),
                           _column(rows, "solubility", path)):
            ids.append(g)
            seqs.append(s)
            labels.append(float(y))
    return ids, seqs, labels, None


DEEPSOL_FILES = ("solubility/deepsol/val_src", "solubility/deepsol/val_tgt",
                 "solubility/deepsol/test_src", "solubility/deepsol/test_tgt")
DEEPSOL_SOURCE = DataSource(
    url="https://github.com/sameerkhurana10/DSOL_rv0.2 (data/)",
    citation="Khurana et al., DeepSol, Bioinformatics 34:2605 (2018)",
    licence="MIT",
    files=DEEPSOL_FILES,
    sha256={DEEPSOL_FILES[0]: "4b869b7ae014fc490930cee5a36284a8e7dbe80eefcb90e280378a052c64eda4",
            DEEPSOL_FILES[1]: "0b2bb65e082bf9cbeb9b46cd917aa417511075404d77f491ed9afd7112e71227",
            DEEPSOL_FILES[2]: "67e6dc6e104eee78c699b7dc592ffd6a14279abd3bbbd779ac96d7a5f4ab0f11",
            DEEPSOL_FILES[3]: "ec73662e8911d9bc6de2e9c7d5147b66fb897651c2447f325832c2749c0e48d7"},
    caveat="PARTIAL: DeepSol validation + test sets only (the 62k training sequences are not "
           "in the local data)")


def _read_deepsol(data_dir: Path):
    paths = _require(data_dir, "deepsol", DEEPSOL_SOURCE, DEEPSOL_FILES)
    ids, seqs, labels = [], [], []
    for src, tgt in (paths[0:2], paths[2:4]):
        s_lines = [ln.strip() for ln in src.read_text().splitlines() if ln.strip()]
        t_lines = [ln.strip() for ln in tgt.read_text().splitlines() if ln.strip()]
        if len(s_lines) != len(t_lines):
            raise ValueError(f"{src} has {len(s_lines)} sequences but {tgt} has "
                             f"{len(t_lines)} labels")
        part = src.name.replace("_src", "")
        for i, (s, t) in enumerate(zip(s_lines, t_lines)):
            if t not in ("0", "1"):
                raise ValueError(f"{tgt} line {i + 1}: label must be 0 or 1, got {t!r}")
            ids.append(f"deepsol_{part}_{i + 1}")
            seqs.append(s)
            labels.append(int(t))
    return ids, seqs, labels, ["insoluble", "soluble"]


#: DeepFRI's file names (TorchDrug's GeneOntology.zip uses the undated names).
GO_ANNOT = ("go/nrPDB-GO_annot.tsv", "go/nrPDB-GO_2019.06.18_annot.tsv")
GO_FASTA = ("go/nrPDB-GO_sequences.fasta", "go/nrPDB-GO_2019.06.18_sequences.fasta")
GO_BRANCHES = {"mf": "molecular_function", "bp": "biological_process",
               "cc": "cellular_component"}
GO_SOURCE = DataSource(
    url="https://github.com/flatironinstitute/DeepFRI (data: "
        "https://users.flatironinstitute.org/~renfrew/DeepFRI_data/ nrPDB-GO_2019.06.18_annot.tsv"
        " + nrPDB-GO_2019.06.18_sequences.fasta); same files in PEER/TorchDrug "
        "https://zenodo.org/record/6622158/files/GeneOntology.zip",
    citation="Gligorijevic et al., DeepFRI, Nat. Commun. 12:3168 (2021)",
    licence="DeepFRI code BSD-3-Clause; annotations derived from PDB/SIFTS/GO (open data)",
    files=(GO_ANNOT[0], GO_FASTA[0]),
    caveat="")


def read_deepfri_annot(path: str | os.PathLike, branch: str = "mf"
                       ) -> tuple[dict[str, list[str]], list[str]]:
    """Parse DeepFRI's ``nrPDB-GO_annot.tsv``: ``({chain: [GO terms]}, term vocabulary)`` for
    one branch (``mf``, ``bp`` or ``cc``).

    Layout (tab-separated): for each of MF, BP, CC a header line, the line of GO ids, a header
    line and the line of GO names; then a header ``### PDB-chain ...`` and one row per chain:
    ``chain<TAB>mf,terms<TAB>bp,terms<TAB>cc,terms``.
    """
    if branch not in GO_BRANCHES:
        raise ValueError(f"GO branch must be one of {sorted(GO_BRANCHES)}, got {branch!r}")
    col = list(GO_BRANCHES).index(branch)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if len(rows) < 13 or not rows[0] or not rows[0][0].startswith("#"):
        raise ValueError(f"{path}: not a DeepFRI GO annotation file (expected 12 header lines "
                         "of GO terms/names for MF, BP, CC, then '### PDB-chain ...')")
    vocab = [t for t in rows[1 + 4 * col] if t]
    known = set(vocab)
    annot: dict[str, list[str]] = {}
    for n, row in enumerate(rows[13:], 14):
        if not row or not row[0]:
            continue
        terms_field = row[1 + col] if len(row) > 1 + col else ""
        terms = [t for t in terms_field.split(",") if t]
        unknown = [t for t in terms if t not in known]
        if unknown:
            raise ValueError(f"{path} line {n}: {row[0]} has term(s) {unknown} not in the "
                             f"{GO_BRANCHES[branch]} vocabulary of the header")
        annot[row[0]] = terms
    return annot, vocab


def _first_present(data_dir: Path, names: tuple[str, ...]) -> str:
    for n in names:
        if (data_dir / n).is_file():
            return n
    return names[0]


def _go_reader(branch: str, task_name: str):
    def read(data_dir: Path):
        annot_name, fasta_name = _first_present(data_dir, GO_ANNOT), _first_present(data_dir,
                                                                                    GO_FASTA)
        annot_path, fasta_path = _require(data_dir, task_name, GO_SOURCE,
                                          (annot_name, fasta_name))
        annot, vocab = read_deepfri_annot(annot_path, branch)
        ids, seqs, labels = [], [], []
        for rec in iter_fasta(fasta_path):
            terms = annot.get(rec.id)
            if terms:  # chains without a term in this branch carry no label
                ids.append(rec.id)
                seqs.append(rec.sequence)
                labels.append(terms)
        return ids, seqs, labels, vocab
    return read


TASKS: dict[str, TaskSpec] = {
    "membrane": TaskSpec("membrane", "binary", "membrane-bound vs water-soluble (DeepLoc 2.0)",
                         DEEPLOC2_SOURCE, lambda d: _read_deeploc2(d, "membrane")),
    "localization": TaskSpec("localization", "multiclass",
                             "10-class subcellular localisation (DeepLoc 2.0 single-label)",
                             DEEPLOC2_SOURCE, lambda d: _read_deeploc2(d, "localization")),
    "go": TaskSpec("go", "multilabel", "GO molecular function (DeepFRI PDB set)", GO_SOURCE,
                   _go_reader("mf", "go")),
    "meltome": TaskSpec("meltome", "regression", "melting temperature, °C (FLIP Meltome mixed)",
                        MELTOME_SOURCE, _read_meltome),
    "esol": TaskSpec("esol", "regression", "solubility fraction (eSOL)", ESOL_SOURCE,
                     _read_esol),
    "deepsol": TaskSpec("deepsol", "binary", "soluble vs insoluble (DeepSol, extra)",
                        DEEPSOL_SOURCE, _read_deepsol),
    "go_bp": TaskSpec("go_bp", "multilabel", "GO biological process (DeepFRI PDB set)",
                      GO_SOURCE, _go_reader("bp", "go_bp")),
    "go_cc": TaskSpec("go_cc", "multilabel", "GO cellular component (DeepFRI PDB set)",
                      GO_SOURCE, _go_reader("cc", "go_cc")),
}
#: What ``--tasks all`` means: the paper's five plus DeepSol.
DEFAULT_TASKS = ("membrane", "localization", "go", "meltome", "esol", "deepsol")


def data_dir_default() -> Path:
    """``$MTDP_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get("MTDP_DATA_DIR", "data"))


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


def available_tasks(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the default tasks whose files are present."""
    d = Path(data_dir) if data_dir else data_dir_default()
    out = []
    for n in DEFAULT_TASKS:
        spec = TASKS[n]
        files = spec.source.files
        if n.startswith("go"):
            files = (_first_present(d, GO_ANNOT), _first_present(d, GO_FASTA))
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
    d = Path(data_dir) if data_dir else data_dir_default()
    ids, raw, labels, classes = spec.reader(d)
    notes: list[str] = []
    if spec.source.caveat:
        notes.append(spec.source.caveat)
    notes += _checksum_notes(d, spec.source)

    # Prepare every sequence exactly as the models see it; invalid ones are counted, not hidden.
    prepared: list[tuple[str, str, object]] = []
    invalid: list[str] = []
    for i, (pid, s, y) in enumerate(zip(ids, raw, labels), 1):
        try:
            prepared.append((pid, prepare(s, max_len=max_len, seq_id=pid, record=i), y))
        except SequenceError as exc:
            invalid.append(str(exc))
    if invalid:
        notes.append(f"{len(invalid)} invalid sequence(s) dropped, e.g. {invalid[0]}")
    prepared, dup_note = _dedupe(prepared, spec.kind)
    if dup_note:
        notes.append(dup_note)

    if max_proteins is not None and len(prepared) > max_proteins:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(prepared), size=max_proteins, replace=False))
        notes.append(f"SUBSAMPLED: {max_proteins} of {len(prepared)} proteins (seed {seed})")
        prepared = [prepared[i] for i in keep]

    out_ids = [p[0] for p in prepared]
    seqs = [p[1] for p in prepared]
    ys = [p[2] for p in prepared]
    if spec.kind == "regression":
        y_arr = np.asarray(ys, dtype=np.float32)
        return Task(name, spec.kind, spec.description, out_ids, seqs, y_arr, None, spec.source,
                    notes, max_len)
    if spec.kind == "multilabel":
        assert classes is not None
        col = {t: j for j, t in enumerate(classes)}
        y_arr = np.zeros((len(ys), len(classes)), dtype=np.float32)
        for i, terms in enumerate(ys):
            y_arr[i, [col[t] for t in terms]] = 1.0
        counts = y_arr.sum(0)
        keep_terms = np.flatnonzero(counts >= min_class_count)
        if len(keep_terms) < len(classes):
            notes.append(f"{len(classes) - len(keep_terms)} of {len(classes)} GO terms with "
                         f"< {min_class_count} proteins dropped")
        y_arr = y_arr[:, keep_terms]
        classes = [classes[j] for j in keep_terms]
        has = y_arr.sum(1) > 0
        if not has.all():
            notes.append(f"{int((~has).sum())} protein(s) left without a kept term dropped")
        idx = np.flatnonzero(has)
        return Task(name, spec.kind, spec.description, [out_ids[i] for i in idx],
                    [seqs[i] for i in idx], y_arr[idx], classes, spec.source, notes, max_len)
    # binary / multiclass: labels are class names or indices into ``classes``.
    assert classes is not None
    names = [classes[y] if isinstance(y, (int, np.integer)) else str(y) for y in ys]
    counts = {c: names.count(c) for c in classes}
    small = [c for c in classes if counts[c] < min_class_count]
    if small:
        notes.append(f"class(es) with < {min_class_count} proteins dropped: "
                     + ", ".join(f"{c} ({counts[c]})" for c in small))
    kept_classes = [c for c in classes if c not in small]
    if len(kept_classes) < 2:
        raise ValueError(f"task {name!r}: fewer than 2 classes with >= {min_class_count} "
                         f"proteins (counts {counts}); raise max_proteins")
    col = {c: j for j, c in enumerate(kept_classes)}
    idx = [i for i, c in enumerate(names) if c in col]
    y_arr = np.asarray([col[names[i]] for i in idx], dtype=np.int64)
    return Task(name, spec.kind, spec.description, [out_ids[i] for i in idx],
                [seqs[i] for i in idx], y_arr, kept_classes, spec.source, notes, max_len)


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
