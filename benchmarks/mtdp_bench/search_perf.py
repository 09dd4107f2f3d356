"""Search speed over the store: generated vectors in a real store table, the real index and
query path (:mod:`mtdp.search`), recall against exact search done in NumPy.

The vectors are a seeded Gaussian mixture (``clusters`` centres, within-cluster spread
``spread`` of the between-centre spread): protein embeddings are clustered by family, and
isotropic noise would make every method look bad and no data like it exists. Queries are new
draws from the same mixture, not stored rows. Latency is one query vector per call (what an
interactive user sees), after warm-up; the figures are medians/99th percentiles over the
queries, on this machine.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mtdp.config import Config, option
from mtdp.search.index import METRICS, MIN_ROWS, build_index, index_state
from mtdp.search.query import nearest
from mtdp.store import EmbeddingStore

CHUNK = 100_000
#: Warm-up queries before each timed setting (not timed, not scored).
WARM = 200


@dataclass
class SearchSpeedConfig(Config):
    """The run's data, index settings and queries (``benchmarks/search_speed.py`` flags)."""

    rows: int = option(1_000_000, ge=MIN_ROWS, help="stored vectors")
    dim: int = option(128, ge=1, help="vector dimension")
    clusters: int = option(4096, ge=1, help="Gaussian mixture centres")
    spread: float = option(1.0, gt=0.0, help=(
        "within-cluster standard deviation, relative to the spread of the centres"))
    queries: int = option(300, ge=10, help="timed queries (new draws from the mixture)")
    k: int = option(10, ge=1, help="neighbours per query (recall@k)")
    metric: str = option("cosine", choices=METRICS, help="distance")
    kinds: list[str] = option(factory=lambda: ["ivf_pq"], help=(
        "index kinds to build and time, comma-separated (ivf_hnsw_sq, ivf_pq)"))
    partitions: list[int] = option(factory=lambda: [0], help=(
        "IVF partitions to try, comma-separated (0: the default, about sqrt(rows))"))
    probes: list[int] = option(factory=lambda: [10, 20, 40], help="nprobes values to time")
    refine: list[int] = option(factory=lambda: [5, 10, 20], help="refine factors to time")
    seed: int = option(0, ge=0, help="seed of the vectors and queries")
    store: str | None = option(None, help="keep the store here (default: a temporary folder)")
    json: str | None = option(None, help="write every figure to this file")


def mixture(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator
            ) -> np.ndarray:
    which = rng.integers(0, len(centres), n)
    return (centres[which] + spread * rng.standard_normal((n, centres.shape[1]))
            ).astype(np.float32)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Row numbers of the exact k nearest rows (ground truth)."""
    from mtdp.search.transfer import knn

    return knn(data, queries, k, metric)[0]


def fill(cfg: SearchSpeedConfig, folder: Path, log: Callable[[str], None]):
    """A store with ``rows`` generated vectors; returns (table, data, queries, seconds)."""
    from mtdp.store.keys import seq_hash

    rng = np.random.default_rng(cfg.seed)
    centres = rng.standard_normal((cfg.clusters, cfg.dim)).astype(np.float32)
    store = EmbeddingStore(folder)
    identity = {"class": "generated-mixture", "dim": cfg.dim, "max_len": 0,
                "too_long": "truncate", "pooling": "none",
                "weights": f"seed{cfg.seed}:k{cfg.clusters}:s{cfg.spread}"}
    table = store.model(identity, "generated")
    data = np.empty((cfg.rows, cfg.dim), dtype=np.float32)
    t0 = time.perf_counter()
    for start in range(0, cfg.rows, CHUNK):
        part = mixture(min(CHUNK, cfg.rows - start), centres, cfg.spread, rng)
        data[start:start + len(part)] = part
        hashes = [seq_hash(str(i)) for i in range(start, start + len(part))]
        table.add(hashes, [1] * len(part), part)
    seconds = time.perf_counter() - t0
    log(f"[search] {cfg.rows:,} × {cfg.dim} vectors stored in {seconds:.0f} s")
    queries = mixture(cfg.queries + WARM, centres, cfg.spread, rng)
    return table, data, queries, seconds


def time_queries(table, queries: np.ndarray, truth_hashes: list[set[str]], k: int,
                 metric: str, warm: np.ndarray | None = None, **kw) -> dict[str, float]:
    """p50/p99 latency and recall of one-vector queries, after ``warm`` (other queries:
    the index pages a service would have in memory, without timing the same queries)."""
    state = index_state(table) if not kw.get("exact") else None
    for q in (warm if warm is not None else queries[:10]):
        nearest(table, q[None], k, metric, state=state, **kw)
    lat, recall = [], []
    for q, truth in zip(queries, truth_hashes):
        t0 = time.perf_counter()
        got = nearest(table, q[None], k, metric, state=state, **kw)[0]
        lat.append(time.perf_counter() - t0)
        recall.append(len({h for h, _ in got} & truth) / k)
    ms = np.asarray(lat) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "recall": float(np.mean(recall))}


def run_search_speed(cfg: SearchSpeedConfig, log: Callable[[str], None] = print) -> dict:
    """Fill, index, query; returns every figure (and logs them as it goes)."""
    from mtdp.store.keys import seq_hash

    with tempfile.TemporaryDirectory(prefix="mtdp-search-") as tmp:
        folder = Path(cfg.store or tmp)
        table, data, queries, fill_s = fill(cfg, folder, log)
        queries, warm = queries[:cfg.queries], queries[cfg.queries:]
        t0 = time.perf_counter()
        top = exact_top(data, queries, cfg.k, cfg.metric)
        log(f"[search] exact top-{cfg.k} of {len(queries)} queries in NumPy/torch: "
            f"{time.perf_counter() - t0:.1f} s")
        truth = [{seq_hash(str(i)) for i in row} for row in top]
        out: dict = {"config": cfg.__dict__, "fill_s": fill_s, "results": []}
        exact = time_queries(table, queries[:30], truth[:30], cfg.k, cfg.metric, exact=True)
        log(f"[search] exact (LanceDB flat scan): p50 {exact['p50_ms']:.1f} ms, "
            f"recall {exact['recall']:.3f}")
        out["exact"] = exact
        for kind, parts in [(k, p) for k in cfg.kinds for p in cfg.partitions]:
            info = build_index(table, cfg.metric, kind, parts or None)
            log(f"[search] {kind} index: {info.partitions} partitions, sub-vectors "
                f"{info.sub_vectors}, built in {info.seconds:.1f} s")
            for p in cfg.probes:
                for r in cfg.refine:
                    res = time_queries(table, queries, truth, cfg.k, cfg.metric, warm,
                                       nprobes=p, refine_factor=r)
                    res.update(kind=kind, nprobes=p, refine_factor=r, build_s=info.seconds,
                               partitions=info.partitions)
                    out["results"].append(res)
                    log(f"[search] {kind} nprobes {p:3d} refine {r:3d}: p50 "
                        f"{res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, recall@{cfg.k} "
                        f"{res['recall']:.3f}")
    return out
