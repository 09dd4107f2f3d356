"""Where each benchmark task's data comes from (canonical source, citation, licence, the files
read, checksums of the local copies) and the readers of those files.

A reader takes the data folder and returns ``(ids, raw_sequences, labels, classes,
partitions)``; labels per row are an int/str class, a float, or a list of terms (multilabel);
``partitions`` are the rows' homology partitions (whole sequence clusters per partition) where
the data carry them, else ``None``. Missing files raise
:class:`TaskUnavailable` saying where to get them; nothing is ever substituted.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fetch import checksum
from ..sequences import iter_fasta


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


def _require(data_dir: Path, spec_name: str, source: DataSource, files: tuple[str, ...]
             ) -> list[Path]:
    paths = [data_dir / f for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TaskUnavailable(
            f"task {spec_name!r} skipped: missing {', '.join(missing)}. Get the data with "
            f"`mtdp data fetch benchmarks -o {data_dir}` where it has a download (see "
            f"`mtdp data fetch --help`), or from {source.url} ({source.citation}), placed "
            f"under {data_dir} as {', '.join(files)}")
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
    sha256={DEEPLOC2: checksum(DEEPLOC2)},
    caveat="")


def single_location(label: str) -> bool:
    """True for a DeepLoc 2.0 label naming one location: the localization task keeps only
    those (10 classes); ``Cytoplasm|Nucleus`` and the like are left out."""
    return "|" not in label


def read_deeploc2(data_dir: Path, which: str):
    (path,) = _require(data_dir, which, DEEPLOC2_SOURCE, DEEPLOC2_SOURCE.files)
    rows = _read_csv(path)
    ids, seqs = _column(rows, "accession", path), _column(rows, "sequence", path)
    parts = _partitions(rows, path)
    if which == "membrane":
        labels = [int(float(v)) for v in _column(rows, "membrane", path)]
        return ids, seqs, labels, ["soluble", "membrane"], parts
    keep = [i for i, lab in enumerate(_column(rows, "label", path)) if single_location(lab)]
    labels = [rows[i]["label"] for i in keep]
    return ([ids[i] for i in keep], [seqs[i] for i in keep], labels, sorted(set(labels)),
            [parts[i] for i in keep])


def _partitions(rows: list[dict[str, str]], path: Path) -> list[int]:
    """The ``partition`` column (homology partitions) as integers, checked row by row."""
    out = []
    for i, v in enumerate(_column(rows, "partition", path), 2):
        try:
            out.append(int(v))
        except ValueError:
            raise ValueError(f"{path} line {i}: partition must be an integer, got {v!r}"
                             ) from None
    return out


MELTOME_FILES = ("meltome/flip_mixed_val.csv", "meltome/flip_mixed_test.csv")
MELTOME_SOURCE = DataSource(
    url="https://github.com/J-SNACKKB/FLIP/tree/main/splits/meltome (splits.zip: mixed_split.csv)",
    citation="Dallago et al., FLIP, NeurIPS Datasets and Benchmarks (2021); data: Jarzab et al., "
             "Meltome atlas, Nat. Methods 17:495 (2020)",
    licence="AFL-3.0 (FLIP)",
    files=MELTOME_FILES,
    sha256={f: checksum(f) for f in MELTOME_FILES},
    caveat="PARTIAL: FLIP Meltome mixed split validation + test rows only (the FLIP train "
           "split is not in the local data); the paper cross-validates the whole mixed set")


def read_meltome(data_dir: Path):
    ids, seqs, labels = [], [], []
    for path in _require(data_dir, "meltome", MELTOME_SOURCE, MELTOME_FILES):
        rows = _read_csv(path)
        part = path.stem.replace("flip_mixed_", "")
        for i, (s, t) in enumerate(zip(_column(rows, "sequence", path),
                                       _column(rows, "melting point", path))):
            ids.append(f"meltome_{part}_{i + 1}")
            seqs.append(s)
            labels.append(float(t))
    return ids, seqs, labels, None, None


ESOL_FILES = ("solubility/esol/eSol_train.csv", "solubility/esol/eSol_test.csv")
ESOL_SOURCE = DataSource(
    url="https://github.com/jcchan23/GraphSol (Data/eSol_train.csv, Data/eSol_test.csv); "
        "original: http://www.tanpaku.org/tp-esol/",
    citation="Niwa et al., PNAS 106:4201 (2009); split: Chen et al., GraphSol, "
             "J. Cheminform. 13:7 (2021)",
    licence="MIT (GraphSol repository)",
    files=ESOL_FILES,
    sha256={f: checksum(f) for f in ESOL_FILES},
    caveat="")


def read_esol(data_dir: Path):
    ids, seqs, labels = [], [], []
    for path in _require(data_dir, "esol", ESOL_SOURCE, ESOL_FILES):
        rows = _read_csv(path)
        for g, s, y in zip(_column(rows, "gene", path), _column(rows, "sequence", path),
                           _column(rows, "solubility", path)):
            ids.append(g)
            seqs.append(s)
            labels.append(float(y))
    return ids, seqs, labels, None, None


DEEPSOL_FILES = ("solubility/deepsol/val_src", "solubility/deepsol/val_tgt",
                 "solubility/deepsol/test_src", "solubility/deepsol/test_tgt")
DEEPSOL_SOURCE = DataSource(
    url="https://github.com/sameerkhurana10/DSOL_rv0.2 (data/)",
    citation="Khurana et al., DeepSol, Bioinformatics 34:2605 (2018)",
    licence="MIT",
    files=DEEPSOL_FILES,
    sha256={f: checksum(f) for f in DEEPSOL_FILES},
    caveat="PARTIAL: DeepSol validation + test sets only (the 62k training sequences are not "
           "in the local data)")


def read_deepsol(data_dir: Path):
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
    return ids, seqs, labels, ["insoluble", "soluble"], None


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


def first_present(data_dir: Path, names: tuple[str, ...]) -> str:
    for n in names:
        if (data_dir / n).is_file():
            return n
    return names[0]


def go_reader(branch: str, task_name: str):
    def read(data_dir: Path):
        annot_name, fasta_name = first_present(data_dir, GO_ANNOT), first_present(data_dir,
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
        return ids, seqs, labels, vocab, None
    return read


GO_SWISSPROT = "go/go_mf_swissprot2014.csv.gz"
GO_SWISSPROT_TERMS = "go/go_mf_terms.tsv"
GO_SWISSPROT_SOURCE = DataSource(
    url="Debian package metastudent-data 2.0.1 (dataset_201401/MFO: goasp_annot.dat, "
        "fullTransitiveClosureGO.txt, goasp.fasta); sampled, propagated and clustered as in "
        "the shared data's README",
    citation="UniProtKB/Swiss-Prot 2014_01 GO molecular-function annotations (via Hamp et "
             "al., Metastudent, Bioinformatics 29:1628 (2013)); clusters: MMseqs2, 30 % "
             "identity, 80 % coverage",
    licence="GPL-2+ (Rostlab metastudent-data); UniProt CC BY 4.0",
    files=(GO_SWISSPROT,),
    caveat="NOT THE PAPER'S GO SET: 16,000 Swiss-Prot 2014 proteins, molecular function, "
           "annotations include electronic (IEA) ones, propagated to ancestors; not a CAFA "
           "split (the canonical DeepFRI set is task go_pdb)")


def read_go_swissprot(data_dir: Path):
    """The Swiss-Prot 2014 molecular-function set: ``accession,sequence,cluster,partition,
    go_mf`` (``;``-joined terms, already propagated to every ancestor; root dropped)."""
    import gzip
    import io

    (path,) = _require(data_dir, "go", GO_SWISSPROT_SOURCE, GO_SWISSPROT_SOURCE.files)
    try:
        with gzip.open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable gzip-compressed CSV ({exc})") from None
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()}
            for r in csv.DictReader(io.StringIO(text))]
    ids, seqs = _column(rows, "accession", path), _column(rows, "sequence", path)
    parts = _partitions(rows, path)
    labels, vocab = [], set()
    for i, v in enumerate(_column(rows, "go_mf", path), 2):
        terms = [t for t in v.split(";") if t]
        bad = [t for t in terms if not (t.startswith("GO:") and t[3:].isdigit())]
        if bad:
            raise ValueError(f"{path} line {i} ({ids[i - 2]}): not a GO term: {bad[0]!r}")
        labels.append(terms)
        vocab.update(terms)
    keep = [i for i, t in enumerate(labels) if t]  # no MF term: not an MF benchmark protein
    return ([ids[i] for i in keep], [seqs[i] for i in keep], [labels[i] for i in keep],
            sorted(vocab), [parts[i] for i in keep])
