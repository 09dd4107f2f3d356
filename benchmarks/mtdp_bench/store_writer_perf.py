"""The store writer's cost as its table grows: the pass's commit path
(:meth:`mtdp.store.ModelTable.add`, one ``merge_insert`` on ``seq_hash`` per ``commit_rows``
batch, plus the throughput record) without the model or Ray, on generated rows.

Each setting runs in a fresh process, one after the other in one invocation, so their memory
is comparable: private memory (USS, from ``/proc/self/smaps_rollup``) is sampled ten times
over the fill, with the milliseconds per commit since the last sample, the table's fragments
and the size of the manifests Lance keeps (its ``_versions`` folder, one per version) and of
its data files (those a compaction replaced stay until a cleanup removes old versions).
Settings: ``append`` (what the pipeline's writer does while alone on the table: its rows are
new by construction, :class:`mtdp.store.Appender`, which compacts its fragments every
:data:`~mtdp.store.commits.COMPACT_EVERY` commits; no rows are re-offered; Lance's caches
bounded as in the writer; its old versions are pruned after each compaction, but the
library keeps them an hour, longer than this fill), ``append-pruned`` (as ``append``, old
versions kept ``prune_keep_s`` seconds only: what a pass longer than an hour sees),
``append-uncompacted`` (as ``append`` without the compactions, as the writer was: a fragment
per commit), ``merge`` (every
commit a ``merge_insert``, what the writer did before and still does once another process
commits to the table) and ``merge+index`` (as ``merge``, with the ``seq_hash`` BTree built
after the first commit and brought up to date every ``refresh_every`` commits; the refresh is
timed in the commit cost). With ``append``, the end of a pass is timed too, each way in a fresh
process: on a table whose last tenth a second pass appended, the pass's ``optimize`` (fragments
compacted, the ``seq_hash`` index brought up to date) against the same after a full rebuild of
that index (what the pass did before) and against LanceDB's own ``optimize`` (whose
compaction merged the writer's fragments again), with the MB of data each writes.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtdp.config import Config, option
from .memory import uss_bytes

SETTINGS = ("append", "append-pruned", "append-uncompacted", "merge", "merge+index")


@dataclass
class StoreWriterConfig(Config):
    """The fill (``benchmarks/store_writer.py`` flags)."""

    rows: int = option(1_000_000, ge=1, help="rows written in all")
    commit_rows: int = option(2048, ge=1, help="rows per commit (the pass's --commit-rows)")
    dim: int = option(128, ge=1, help="embedding dimension (128: the tiny student)")
    repeat_every: int = option(7, ge=0, help=(
        "every N-th commit re-offers 10 rows of the one before (0: never), as a rerun does; "
        "merge settings only"))
    refresh_every: int = option(16, ge=1, help="commits between index refreshes (merge+index)")
    prune_keep_s: float = option(10.0, ge=0.0, help=(
        "append-pruned: seconds old versions are kept (the library keeps them an hour)"))
    settings: list[str] = option(factory=lambda: list(SETTINGS), help=(
        "settings to run, comma-separated (append, append-pruned, append-uncompacted, merge, "
        "merge+index)"))
    json: str | None = option(None, help="write every figure to this file")

    def validate(self) -> None:
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad:
            raise ValueError(f"settings: unknown {', '.join(bad)} (known: "
                             f"{', '.join(SETTINGS)})")


def _hashes(commit: int, n: int) -> list[str]:
    return [hashlib.sha256(f"{commit}-{i}".encode()).hexdigest() for i in range(n)]


def _mb(folder: Path) -> float:
    """MB of the files in ``folder`` (a table's manifests or data files)."""
    return sum(f.stat().st_size for f in folder.iterdir()) / 2**20


def _fill(cfg: StoreWriterConfig, setting: str) -> list[dict]:
    """One setting's fill in this process; a sample per tenth of the commits."""
    from lancedb.index import BTree

    from mtdp.pipeline.stages import StoreWriter
    from mtdp.store import Appender, EmbeddingStore

    if setting == "append-pruned":  # this process only (a fresh one per setting)
        from mtdp.store import commits as store_commits

        store_commits.KEEP_VERSIONS_S = cfg.prune_keep_s
    rng = np.random.default_rng(0)
    commits = -(-cfg.rows // cfg.commit_rows)
    every = max(1, commits // 10)
    samples: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        identity = {"weights": "generated", "max_len": 512, "pooling": "mean", "dim": cfg.dim}
        appends = setting.startswith("append")
        cache = StoreWriter.CACHE_MB if appends else None  # as the writer
        table = EmbeddingStore(tmp, cache_mb=cache).model(identity, "generated")
        via = Appender(table.table, table.version(), 0 if setting == "append-uncompacted"
                       else None) if appends else None
        versions, data = (Path(tmp) / f"{table.table_name}.lance" / d
                          for d in ("_versions", "data"))
        repeat = cfg.repeat_every if via is None else 0
        last, inserted = time.perf_counter(), 0
        for k in range(commits):
            n = min(cfg.commit_rows, cfg.rows - k * cfg.commit_rows)
            hashes = _hashes(k, n)
            if repeat and k % repeat == repeat - 1 and k:
                hashes[:10] = _hashes(k - 1, min(10, n))
            inserted += table.add(hashes, [300] * n,
                                  rng.standard_normal((n, cfg.dim), dtype=np.float32), via=via)
            table.record_time(n, 1.0)
            if setting == "merge+index":
                if k == 0:
                    table.table.create_index("seq_hash", config=BTree(), replace=True)
                elif k % cfg.refresh_every == 0:
                    table.table.to_lance().optimize.optimize_indices()
            if (k + 1) % every == 0 or k == commits - 1:
                now = time.perf_counter()
                samples.append({"rows": min(cfg.rows, (k + 1) * cfg.commit_rows),
                                "inserted": inserted, "stored": table.count(),
                                "merged": via.merged if via is not None else k + 1,
                                "uss_mb": uss_bytes() / 2**20,
                                "fragments": len(table.table.to_lance().get_fragments()),
                                "manifests_mb": _mb(versions), "data_mb": _mb(data),
                                "ms_per_commit": 1000 * (now - last) / (k % every + 1)})
                last = now
    return samples


def _appended(table, first: int, commits: int, cfg: StoreWriterConfig) -> None:
    """``commits`` commits of new rows through a fresh writer's :class:`Appender`."""
    from mtdp.store import Appender

    rng, via = np.random.default_rng(first), Appender(table.table, table.version())
    for k in range(first, first + commits):
        table.add(_hashes(k, cfg.commit_rows), [300] * cfg.commit_rows,
                  rng.standard_normal((cfg.commit_rows, cfg.dim), dtype=np.float32), via=via)


def _files(folder: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in folder.iterdir()}


def _lancedb_optimize(table) -> None:
    """The pass's end before fragments were settled: the index built once, then LanceDB's own
    ``optimize`` (compaction aiming at 1 M rows: the writer's fragments merged again)."""
    from lancedb.index import BTree

    if not any(list(i.columns) == ["seq_hash"] for i in table.table.list_indices()):
        table.table.create_index("seq_hash", config=BTree(), replace=True)
    table.table.optimize()


def _pass_end(cfg: StoreWriterConfig, step: str) -> dict:
    """A pass's end step on a table of ``rows`` whose last tenth a second pass added (the first
    pass ended the same way): ``incremental``, the pass's ``optimize`` (the ``seq_hash`` index
    brought up to date, fragments under :data:`~mtdp.store.commits.SETTLED_ROWS` merged),
    ``rebuild`` (the index built anew first, as the pass did before) or ``lancedb`` (LanceDB's
    own ``optimize``, as the pass did before its fragments were settled); its seconds, the
    rise of this process's RSS peak (MB), the fragments after it and the MB of data files it
    wrote (and the first pass's end wrote)."""
    from lancedb.index import BTree

    from mtdp.store import EmbeddingStore
    from .memory import reset_rss_peak, rss_bytes, rss_peak_bytes

    commits = -(-cfg.rows // cfg.commit_rows)
    with tempfile.TemporaryDirectory() as tmp:
        identity = {"weights": "generated", "max_len": 512, "pooling": "mean", "dim": cfg.dim}
        table = EmbeddingStore(tmp).model(identity, "generated")
        end = (lambda: _lancedb_optimize(table)) if step == "lancedb" else table.optimize
        _appended(table, 0, commits - commits // 10, cfg)
        data = Path(table.table.to_lance().uri) / "data"
        before = _files(data)
        end()
        first = sum(n for f, n in _files(data).items() if f not in before)
        _appended(table, commits - commits // 10, commits // 10, cfg)
        before = _files(data)
        reset_rss_peak()
        base, t0 = rss_bytes(), time.perf_counter()
        if step == "rebuild":  # what the pass's end did before: rebuild, then compact
            table.table.create_index("seq_hash", config=BTree(), replace=True)
        end()
        seconds = time.perf_counter() - t0
        written = sum(n for f, n in _files(data).items() if f not in before)
        return {"rows": table.count(), "seconds": seconds,
                "rss_peak_rise_mb": (rss_peak_bytes() - base) / 2**20,
                "fragments": len(table.table.to_lance().get_fragments()),
                "written_mb": written / 2**20, "first_written_mb": first / 2**20,
                "data_mb": sum(before.values()) / 2**20}


_STEPS = {"incremental": "incremental seq_hash index",
          "rebuild": "rebuild seq_hash index",
          "lancedb": "LanceDB's optimize, as before settled fragments"}


def run_store_writer(cfg: StoreWriterConfig) -> dict:
    """Every setting in its own fresh process, one after the other; prints a table each."""
    cfg.validate()
    out = {}
    ctx = multiprocessing.get_context("spawn")
    for setting in cfg.settings:
        t0 = time.perf_counter()
        with ctx.Pool(1) as pool:
            out[setting] = pool.apply(_fill, (cfg, setting))
        print(f"\n{setting}: {cfg.rows:,} rows in commits of {cfg.commit_rows:,}, "
              f"{time.perf_counter() - t0:.0f} s")
        print(f"{'rows':>10} {'inserted':>10} {'stored':>10} {'merged':>7} {'USS MB':>8} "
              f"{'ms/commit':>10} {'fragments':>10} {'manifests MB':>13} {'data MB':>8}")
        for s in out[setting]:
            print(f"{s['rows']:>10,} {s['inserted']:>10,} {s['stored']:>10,} "
                  f"{s['merged']:>7} {s['uss_mb']:>8.0f} {s['ms_per_commit']:>10.0f} "
                  f"{s['fragments']:>10} {s['manifests_mb']:>13.1f} {s['data_mb']:>8.0f}")
    if "append" in cfg.settings:
        for step in ("incremental", "rebuild", "lancedb"):
            with ctx.Pool(1) as pool:
                r = out[f"pass end: {step}"] = pool.apply(_pass_end, (cfg, step))
            print(f"pass end ({_STEPS[step]}, {r['rows']:,} rows, last tenth new): "
                  f"{r['seconds']:.1f} s, RSS peak +{r['rss_peak_rise_mb']:.0f} MB, "
                  f"{r['fragments']} fragments after, {r['written_mb']:.0f} MB written "
                  f"(the first pass's end: {r['first_written_mb']:.0f} MB; data files "
                  f"before: {r['data_mb']:.0f} MB)")
    return out
