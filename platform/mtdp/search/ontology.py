"""GO namespaces for ``mtdp annotate --go-terms``: which ontology (BPO, MFO, CCO) each term is
in, read from a GO OBO file (``[Term]`` stanzas: ``id``, ``alt_id``, ``namespace``) or a table
with a term column and a namespace / aspect column (GAF's P / F / C letters accepted). Transferred
terms are then written one file per ontology, as goPredSim writes them."""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

#: Ontology short names (goPredSim's file suffixes) by OBO namespace or GAF aspect.
ONTOLOGIES = {"biological_process": "bpo", "molecular_function": "mfo",
              "cellular_component": "cco", "p": "bpo", "f": "mfo", "c": "cco",
              "bpo": "bpo", "mfo": "mfo", "cco": "cco", "bp": "bpo", "mf": "mfo", "cc": "cco"}
#: The per-ontology output files, always written (``unknown`` only when needed).
ONTOLOGY_FILES = ("bpo", "mfo", "cco")
TERM_COLUMNS = ("term", "go", "go_id", "id", "GO")
NAMESPACE_COLUMNS = ("namespace", "aspect", "ontology")


def _open(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path, newline="")


def _ontology(value: str, where: str) -> str:
    key = value.strip().lower()
    if key not in ONTOLOGIES:
        raise ValueError(f"{where}: unknown GO namespace {value!r} (expected "
                         "biological_process, molecular_function, cellular_component or P/F/C)")
    return ONTOLOGIES[key]


def _read_obo(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    ids: list[str] = []
    namespace, in_term, start = None, False, 0

    def close() -> None:
        if in_term and ids:
            if namespace is None:
                raise ValueError(f"{path}:{start}: term {ids[0]} has no namespace")
            out.update(dict.fromkeys(ids, namespace))

    with _open(path) as fh:
        for n, raw in enumerate(fh, 1):
            line = raw.strip()
            if line.startswith("["):
                close()
                in_term, ids, namespace, start = line == "[Term]", [], None, n
            elif in_term and line.startswith(("id:", "alt_id:")):
                ids.append(line.split(":", 1)[1].split("!")[0].strip())
            elif in_term and line.startswith("namespace:"):
                namespace = _ontology(line.split(":", 1)[1], f"{path}:{n}")
        close()
    return out


def _read_table(path: Path) -> dict[str, str]:
    with _open(path) as fh:
        head = fh.readline()
        delim = "\t" if "\t" in head else ","
        fh.seek(0)
        rows = csv.DictReader(fh, delimiter=delim)
        cols = rows.fieldnames or []
        term = next((c for c in TERM_COLUMNS if c in cols), None)
        space = next((c for c in NAMESPACE_COLUMNS if c in cols), None)
        if term is None or space is None:
            raise ValueError(f"{path}: a GO term table needs a term column "
                             f"({', '.join(TERM_COLUMNS)}) and a namespace column "
                             f"({', '.join(NAMESPACE_COLUMNS)}); columns: {cols}")
        return {r[term].strip(): _ontology(r[space] or "", f"{path}:{n + 2}")
                for n, r in enumerate(rows) if (r.get(term) or "").strip()}


def read_namespaces(path: str | os.PathLike) -> dict[str, str]:
    """Term id (and every ``alt_id``) → ``bpo`` / ``mfo`` / ``cco``, from an OBO file or a
    table; a file with no term is refused, naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--go-terms {p}: no such file")
    with _open(p) as fh:
        head = fh.read(4096)
    obo = "[Term]" in head or head.lstrip().startswith("format-version:")
    found = _read_obo(p) if obo else _read_table(p)
    if not found:
        raise ValueError(f"{p}: no GO term with a namespace found")
    return found


def ontology_path(path: str | os.PathLike, ontology: str) -> Path:
    """``X_mfo.tsv`` beside ``X.tsv`` (goPredSim's per-ontology files; ``unknown``: terms the
    ontology file does not list)."""
    p = Path(path)
    return p.with_name(f"{p.stem}_{ontology}{p.suffix}")
