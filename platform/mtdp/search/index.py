"""Approximate-nearest-neighbour indexes on a model's table of the store (LanceDB).

Both kinds cut the vectors into k-means partitions (IVF); a query probes ``nprobes`` of them
and re-ranks ``refine_factor × k`` candidates on the full vectors, so the distances returned
are exact. ``ivf_hnsw_sq`` (default): an HNSW graph per partition over scalar-quantised
vectors, the more accurate per probe; ``ivf_pq``: product-quantised codes, faster to build
and smaller (measured: docs/results/search-speed.md). An index is built for one metric
(``cosine`` or ``euclidean``); rows added
after it are still found (LanceDB scans them exactly) until the next ``mtdp index`` folds them
in. Lookups by sequence hash get a BTree index on the same call (the table's and every id
table's ``seq_hash``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..store.lance import ModelTable, StoreError

METRICS = ("cosine", "euclidean")
KINDS = ("ivf_pq", "ivf_hnsw_sq")
#: LanceDB's names of the metrics.
LANCE_METRIC = {"cosine": "cosine", "euclidean": "l2"}
#: Product quantisation trains 256 centroids per sub-vector: fewer rows cannot be indexed
#: (and need no index: exact search over them takes milliseconds).
MIN_ROWS = 256


@dataclass
class IndexInfo:
    """What :func:`build_index` built."""

    model: str
    model_key: str
    kind: str
    metric: str
    rows: int
    partitions: int
    sub_vectors: int | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_partitions(rows: int) -> int:
    """√rows IVF partitions (≈ √rows rows each), at least 1, with ≥ 256 rows per partition
    for small tables (k-means needs points to place its centroids)."""
    return max(1, min(round(math.sqrt(rows)), rows // MIN_ROWS))


def default_sub_vectors(dim: int) -> int:
    """PQ sub-vectors: the largest divisor of ``dim`` not above ``dim / 8`` (8 dimensions per
    code byte for 128-d vectors: 16 bytes a vector); 1 for tiny dimensions."""
    return max((d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0), default=1)


def build_index(table: ModelTable, metric: str = "cosine", kind: str = "ivf_hnsw_sq",
                partitions: int | None = None, sub_vectors: int | None = None) -> IndexInfo:
    """Build (or rebuild) the vector index of ``table`` for ``metric``.

    Raises:
        ValueError: an unknown metric/kind, or settings that do not fit the table.
        StoreError: the table holds fewer than :data:`MIN_ROWS` embeddings.
    """
    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {METRICS}, not {metric!r}")
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, not {kind!r}")
    rows = table.count()
    if rows < MIN_ROWS:
        raise StoreError(f"{table.name} has {rows} embedding(s) in the store: an index needs "
                         f"at least {MIN_ROWS}; searches over so few are exact and fast "
                         "without one")
    partitions = partitions or default_partitions(rows)
    if not 1 <= partitions <= rows:
        raise ValueError(f"--partitions must be in [1, {rows}] (rows of the table), got "
                         f"{partitions}")
    from lancedb.index import IvfHnswSq, IvfPq

    t0 = time.perf_counter()
    if kind == "ivf_pq":
        sub_vectors = sub_vectors or default_sub_vectors(table.dim)
        if table.dim % sub_vectors:
            raise ValueError(f"--sub-vectors {sub_vectors} must divide the dimension "
                             f"{table.dim}")
        config = IvfPq(distance_type=LANCE_METRIC[metric], num_partitions=partitions,
                       num_sub_vectors=sub_vectors)
    else:
        sub_vectors = None
        config = IvfHnswSq(distance_type=LANCE_METRIC[metric], num_partitions=partitions)
    table.table.create_index("embedding", config=config, replace=True)
    table.optimize()  # the seq_hash BTree and compaction
    index_id_tables(table.store)
    return IndexInfo(table.name, table.key, kind, metric, rows, partitions, sub_vectors,
                     time.perf_counter() - t0)


def index_id_tables(store) -> None:
    """BTree indexes on the ``seq_hash`` of every id table (hits are named through them)."""
    from lancedb.index import BTree

    for run in store.runs():
        t = store._open(f"ids_{run}")
        if t.count_rows():
            t.create_index("seq_hash", config=BTree(), replace=True)


def index_state(table: ModelTable) -> dict[str, Any] | None:
    """The table's vector index — ``kind``, ``metric``, ``indexed`` and ``unindexed`` rows —
    or None when it has none."""
    for ix in table.table.list_indices():
        if list(ix.columns) == ["embedding"]:
            stats = table.table.index_stats(ix.name)
            metric = {v: k for k, v in LANCE_METRIC.items()}.get(stats.distance_type,
                                                                 stats.distance_type)
            return {"kind": str(stats.index_type).lower(), "metric": metric,
                    "indexed": stats.num_indexed_rows, "unindexed": stats.num_unindexed_rows}
    return None
