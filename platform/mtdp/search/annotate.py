"""``mtdp annotate``: labels for new proteins from their nearest annotated references.

The reference side is any table (CSV/TSV, gzip or not) of ``id, sequence, labels``: GO terms
(``;``/``,``/space-separated, e.g. ``go/go_mf_swissprot2014.csv.gz``'s ``go_mf``) or one class
per protein (e.g. a localization). References and queries are embedded through the store (a
stored sequence is never recomputed) and compared exactly (every reference; the reference
set fits in memory); scores as in :mod:`.transfer`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..sequences import SequenceError, prepare
from .transfer import knn, similarity

if TYPE_CHECKING:
    from ..embed import CacheCounts
    from ..models.base import Embedder
    from ..sequences import Record
    from ..store import EmbeddingStore

KINDS = ("auto", "terms", "class")
ID_COLUMNS = ("id", "accession", "entry", "name", "ACC", "Entry")
SEQUENCE_COLUMNS = ("sequence", "Sequence", "seq")
LABEL_COLUMNS = ("labels", "label", "go", "go_terms", "go_mf", "location", "class")
_SPLIT = re.compile(r"[;,\s]+")


@dataclass
class Reference:
    """Annotated reference proteins (prepared sequences)."""

    source: str
    kind: str                      # "terms" or "class"
    ids: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)   # class: one label per protein
    #: Rows without any label (they lend nothing) and rows skipped as invalid.
    unlabelled: int = 0
    rejects: list[SequenceError] = field(default_factory=list)


def _column(df, given: str | None, choices: Sequence[str], what: str, source: str) -> str:
    if given:
        if given not in df.columns:
            raise ValueError(f"{source}: no column {given!r} (columns: {list(df.columns)})")
        return given
    for c in choices:
        if c in df.columns:
            return c
    raise ValueError(f"{source}: no {what} column (looked for {', '.join(choices)}; columns: "
                     f"{list(df.columns)}); name it with --{what}-column")


def read_reference(path: str | os.PathLike, *, id_column: str | None = None,
                   sequence_column: str | None = None, labels_column: str | None = None,
                   kind: str = "auto", skip_invalid: bool = False) -> Reference:
    """Read a reference table; bad rows are named by file, line and id (``skip_invalid``:
    listed in ``rejects`` instead); ``kind="auto"`` reads labels as terms when any of them
    holds a separator or a ``GO:`` id, else as classes."""
    import pandas as pd

    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, not {kind!r}")
    src = os.fspath(path)
    if not os.path.isfile(src):
        raise ValueError(f"reference {src}: no such file")
    sep = "\t" if re.search(r"\.(tsv|tab)(\.gz)?$", src) else ","
    try:
        df = pd.read_csv(src, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a bad table
        raise ValueError(f"reference {src}: not a readable {'TSV' if sep == chr(9) else 'CSV'}"
                         f" table ({exc})") from None
    cid = _column(df, id_column, ID_COLUMNS, "id", src)
    cseq = _column(df, sequence_column, SEQUENCE_COLUMNS, "sequence", src)
    clab = _column(df, labels_column, LABEL_COLUMNS, "labels", src)
    values = df[clab].str.strip()
    if kind == "auto":
        kind = "terms" if values.str.contains(r"[;,\s]|GO:", regex=True).any() else "class"
    ref = Reference(src, kind)
    seen: dict[str, int] = {}
    for line, (pid, seq, lab) in enumerate(zip(df[cid], df[cseq], values), 2):
        if pid in seen:
            raise SequenceError(f"duplicate id (first at line {seen[pid]})", source=src,
                                record=line, seq_id=pid)
        seen[pid] = line
        labels = [t for t in _SPLIT.split(lab) if t] if kind == "terms" else [lab] * bool(lab)
        if not labels:
            ref.unlabelled += 1
            continue
        try:
            clean = prepare(seq, max_len=None, seq_id=pid, source=src, record=line)
        except SequenceError as err:
            if not skip_invalid:
                raise
            ref.rejects.append(err)
            continue
        ref.ids.append(pid)
        ref.sequences.append(clean)
        ref.labels.append(labels)
    if not ref.ids:
        raise ValueError(f"reference {src}: no protein with a label in column {clab!r}")
    return ref


@dataclass
class Annotation:
    """One transferred label of a query."""

    query: str
    label: str
    score: float
    #: Neighbours (of the k) carrying the label, and the nearest of them.
    support: int
    nearest_id: str
    nearest_distance: float


def annotate(store: "EmbeddingStore | None", embedder: "Embedder", reference: Reference,
             queries: Sequence["Record"], k: int = 1, metric: str = "cosine", *,
             too_long: str = "truncate", max_len: int | None = None,
             batch_tokens: int | None = None, counts: "CacheCounts | None" = None,
             max_distance: float | None = None) -> list[Annotation]:
    """Labels of each query from its ``k`` nearest references: every term with a positive
    score (highest first), or the winning class. ``max_distance`` (goPredSim's threshold
    mode): only neighbours within it lend (a term's score is then averaged over them), and a
    query with none gets no label — better no annotation than one from a distant protein."""
    from ..embed import embed_cached, model_table

    table = model_table(store, embedder, too_long, max_len) if store is not None else None
    kw = dict(batch_tokens=batch_tokens, too_long=too_long, max_len=max_len, counts=counts)
    ref_emb = embed_cached(embedder, reference.sequences, table, **kw)
    q_emb = embed_cached(embedder, [r.sequence for r in queries], table, **kw)
    return annotate_vectors(reference, ref_emb, queries, q_emb, k, metric, max_distance)


def annotate_vectors(reference: Reference, ref_emb, queries: Sequence["Record"], q_emb,
                     k: int = 1, metric: str = "cosine", max_distance: float | None = None
                     ) -> list[Annotation]:
    """:func:`annotate` on vectors already at hand (e.g. an imported model's)."""
    if k < 1:
        raise ValueError(f"-k must be at least 1, got {k}")
    if max_distance is not None and max_distance < 0:
        raise ValueError(f"--max-distance must be >= 0, got {max_distance}")
    index, dist = knn(ref_emb, q_emb, k, metric)
    sim = similarity(dist, metric)
    out: list[Annotation] = []
    for q, idx, d, s in zip(queries, index, dist, sim):
        if max_distance is not None:
            near = d <= max_distance
            idx, d, s = idx[near], d[near], s[near]
            if not len(idx):
                continue
        scores: dict[str, float] = {}
        support: dict[str, list[int]] = {}
        for j, r in enumerate(idx):
            for label in reference.labels[r]:
                scores[label] = scores.get(label, 0.0) + (s[j] / len(idx) if reference.kind
                                                          == "terms" else s[j] + 1e-9)
                support.setdefault(label, []).append(j)
        if reference.kind == "class":
            total = sum(scores.values())
            scores = {max(scores, key=scores.get): max(scores.values()) / total}
        ranked = sorted(scores.items(), key=lambda p: (-p[1], p[0]))
        out.extend(Annotation(q.id, label, float(v), len(support[label]),
                              reference.ids[idx[support[label][0]]],
                              float(d[support[label][0]]))
                   for label, v in ranked if v > 0)
    return out


#: Output formats of ``mtdp annotate``.
FORMATS = ("tsv", "cafa")


def write_annotations(path: str | os.PathLike, rows: Sequence[Annotation], fmt: str = "tsv",
                      model: str = "") -> Path:
    """``query, label, score, support, nearest_id, nearest_distance`` as TSV, or the CAFA
    prediction format (``AUTHOR`` / ``MODEL`` / ``KEYWORDS`` header, ``target term score``
    lines with scores in (0, 1] at two decimals, ``END``), atomically."""
    from ..io import atomic_open

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    if fmt == "cafa":
        with atomic_open(path) as fh:
            fh.write(f"AUTHOR mtdp\nMODEL 1\nKEYWORDS machine learning, "
                     f"embedding nearest neighbour{(' (' + model + ')') if model else ''}.\n")
            for a in rows:
                score = min(1.0, max(0.01, round(a.score, 2)))  # CAFA: 0.01 .. 1.00
                fh.write(f"{a.query}\t{a.label}\t{score:.2f}\n")
            fh.write("END\n")
        return Path(path)
    with atomic_open(path) as fh:
        fh.write("query\tlabel\tscore\tsupport\tnearest_id\tnearest_distance\n")
        fh.writelines(f"{a.query}\t{a.label}\t{a.score:.4f}\t{a.support}\t{a.nearest_id}\t"
                      f"{a.nearest_distance:.6g}\n" for a in rows)
    return Path(path)

