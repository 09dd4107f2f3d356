"""The k nearest stored proteins of query vectors or sequences.

A hit is a stored sequence that has an id in one of the store's runs (``ids_<run>`` tables:
what the embedding job and ``mtdp embed --run`` name): sequences stored without an id (earlier
queries, the benchmark's cache) are never reported. Distances: ``cosine`` = 1 − cosine
similarity, ``euclidean`` = the L2 distance (not squared). With an index of the same metric
the search is approximate (``nprobes`` partitions, ``refine_factor × k`` candidates re-ranked
on the full vectors); ``exact`` (or no index, or an index of another metric) scans every row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..store.lance import EmbeddingStore, ModelTable, StoreError, fetch_rows
from .index import LANCE_METRIC, METRICS, index_state

if TYPE_CHECKING:
    from ..embed import CacheCounts
    from ..models.base import Embedder
    from ..sequences import Record

@dataclass
class Hit:
    """One reported neighbour of a query."""

    query: str
    rank: int
    hit_id: str
    distance: float
    seq_hash: str
    #: Other ids (of the searched runs) with the very same sequence.
    other_ids: list[str] = field(default_factory=list)


def _check(metric: str, k: int) -> None:
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {METRICS}, not {metric!r}")
    if k < 1:
        raise ValueError(f"-k must be at least 1, got {k}")


def nearest(table: ModelTable, vectors: np.ndarray, k: int, metric: str = "cosine",
            exact: bool = False, nprobes: int = 20, refine_factor: int = 10,
            state: dict | None | str = "look up") -> list[list[tuple[str, float]]]:
    """For each row of ``vectors``: up to ``k`` ``(seq_hash, distance)`` pairs, nearest first,
    over every row of ``table``; ``state``: the table's :func:`index_state` when the caller
    has it (saves a metadata read per call)."""
    _check(metric, k)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != table.dim:
        raise ValueError(f"query vectors of shape {vectors.shape} do not match the "
                         f"{table.dim}-d embeddings of {table.name}")
    if exact:
        state = None
    elif state == "look up":
        state = index_state(table)
    approximate = state is not None and state["metric"] == metric
    # pylance's scanner on a kept dataset: less per-query overhead than LanceDB's query
    # builder (which runs each query through an asyncio loop).
    ds = table.dataset()
    out: list[list[tuple[str, float]]] = []
    for v in vectors:
        near = {"column": "embedding", "q": v, "k": k, "metric": LANCE_METRIC[metric],
                "use_index": approximate}
        if approximate:
            near.update(nprobes=nprobes, refine_factor=refine_factor)
        rows = ds.to_table(columns=["seq_hash"], nearest=near)
        dist = rows.column("_distance").to_numpy().astype(np.float64)
        if metric == "euclidean":
            dist = np.sqrt(np.maximum(dist, 0.0))  # Lance's l2 is the squared distance
        out.append(sorted(zip(rows.column("seq_hash").to_pylist(), dist.tolist()),
                          key=lambda p: p[1]))
    return out


def run_names(store: EmbeddingStore, runs: Sequence[str] | None = None) -> list[str]:
    """The runs searched: ``runs`` (each must exist) or every run of the store."""
    known = store.runs()
    if not runs:
        return known
    unknown = [r for r in runs if r not in known]
    if unknown:
        raise StoreError(f"{store.uri} has no run {unknown[0]!r} (runs: {known or 'none'})")
    return list(runs)


def ids_of(store: EmbeddingStore, hashes: Sequence[str], runs: Sequence[str]
           ) -> dict[str, list[str]]:
    """Ids (in run, then input order) that the runs give each of ``hashes``."""
    wanted = list(dict.fromkeys(hashes))
    named: dict[str, list[tuple[str, int, str]]] = {}
    for r, run in enumerate(runs):
        t = store._open(f"ids_{run}")
        for rows in fetch_rows(t, wanted, ["id", "seq_hash", "order"]):
            for row in rows.to_pylist():
                named.setdefault(row["seq_hash"], []).append((r, row["order"], row["id"]))
    return {h: list(dict.fromkeys(i for *_, i in sorted(v))) for h, v in named.items()}


def search_vectors(store: EmbeddingStore, table: ModelTable, names: Sequence[str],
                   vectors: np.ndarray, k: int = 10, runs: Sequence[str] | None = None,
                   **search) -> list[Hit]:
    """The ``k`` nearest named proteins of each query vector (``names[i]`` is query i's
    name); candidates without an id in the runs are skipped and more fetched as needed."""
    _check(search.get("metric", "cosine"), k)
    runs = run_names(store, runs)
    if not runs:
        raise StoreError(f"{store.uri} has no run (ids table) to name hits by: embed the "
                         "proteins to search with the embedding job or `mtdp embed --store "
                         "DIR --run NAME` first")
    total = table.count()
    hits: dict[int, list[Hit]] = {}
    pending, fetch = list(range(len(vectors))), k
    while pending:
        cands = nearest(table, vectors[pending], fetch, **search)
        named = ids_of(store, [h for c in cands for h, _ in c], runs)
        again = []
        for qi, cand in zip(pending, cands):
            kept = [(h, d) for h, d in cand if h in named][:k]
            if len(kept) < k and len(cand) == fetch and fetch < total:
                again.append(qi)
                continue
            hits[qi] = [Hit(names[qi], r, named[h][0], d, h, named[h][1:])
                        for r, (h, d) in enumerate(kept, 1)]
        pending, fetch = again, min(total, fetch * 4 + 16)
    return [h for qi in range(len(vectors)) for h in hits[qi]]


def search_plan(table: ModelTable, metric: str | None = None, exact: bool = False
                ) -> tuple[str, dict | None, str]:
    """How a search over ``table`` runs: the metric (``metric``, else the index's, else
    cosine), the index state to pass to :func:`nearest` (None when ``exact``), and what is
    used — the index kind, or ``exact`` (asked for, no index, or an index of another metric:
    then the search scans every row)."""
    state = None if exact else index_state(table)
    metric = metric or (state["metric"] if state else "cosine")
    used = state["kind"] if state and state["metric"] == metric else "exact"
    return metric, state, used


def search_records(store: EmbeddingStore, embedder: "Embedder", records: Sequence["Record"],
                   k: int = 10, runs: Sequence[str] | None = None, *,
                   too_long: str = "truncate", max_len: int | None = None,
                   batch_tokens: int | None = None, counts: "CacheCounts | None" = None,
                   table: ModelTable | None = None, **search) -> list[Hit]:
    """Embed prepared query ``records`` through the store (stored ones are read, new ones
    computed and stored) and return their hits (:func:`search_vectors`); ``table``: the
    model's table when the caller has it (else looked up from the embedder's identity).

    Raises:
        StoreError: the store holds no embeddings of this model (with this length policy).
    """
    from ..embed import embed_cached, model_table

    if table is None:
        table = model_table(store, embedder, too_long, max_len, create=False)
    vectors = embed_cached(embedder, [r.sequence for r in records], table,
                           batch_tokens=batch_tokens, too_long=too_long, max_len=max_len,
                           counts=counts)
    return search_vectors(store, table, [r.id for r in records], vectors, k, runs, **search)


def write_hits(path, hits: Sequence[Hit]):
    """``query, rank, hit_id, distance, other_ids`` as TSV (atomically)."""
    from ..io import atomic_open

    with atomic_open(path) as fh:
        fh.write("query\trank\thit_id\tdistance\tother_ids\n")
        fh.writelines(f"{h.query}\t{h.rank}\t{h.hit_id}\t{h.distance:.6g}\t"
                      f"{','.join(h.other_ids)}\n" for h in hits)
    return path
