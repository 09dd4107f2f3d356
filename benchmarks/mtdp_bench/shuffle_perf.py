"""Measurements behind ``benchmarks/pipeline_shuffle.py``: the pipeline's data half (staging
and the pass's lookups, the job's own functions, no model run) under one shuffle setting, in
a fresh process: each half's seconds, the shuffles' sizes, the largest Ray worker's heap.

A setting forces the size rule of :mod:`mtdp.pipeline.context` so that, at the input size
run here, a task holds the rows it would hold at a larger one (``partitions``: both
shuffles' partitions; ``maps``: their map tasks at most; ``range_mb``: the FASTA pieces;
``files_per_read``: staged shards per lookup task)."""
from __future__ import annotations

import os
import time

#: Named settings (the README's table). At 1 M proteins: ``as-60M-old-rule``, one partition,
#: holds the ~0.94 M rows a reduce task of 60 M proteins held under the first rule (64
#: partitions); ``as-60M-rule``, 8 partitions and 8 map tasks, the ~117 k rows a task holds
#: under the rule (512 partitions, 512 map tasks); ``as-60M-128-maps``, 8 partitions and 2
#: map tasks, a task at 60 M with map tasks capped at 128 (a map task ~470 k rows);
#: ``many-objects`` makes the most shuffle objects 1 M proteins can (FASTA pieces of 1 MB, a
#: staged shard per lookup task, a partition per group), against ``default``.
SETTINGS = {
    "default": {},
    "as-60M-old-rule": {"partitions": 1},
    "as-60M-rule": {"partitions": 8, "maps": 8},
    "as-60M-128-maps": {"partitions": 8, "maps": 2},
    "many-objects": {"partitions": 512, "range_mb": 1.0, "files_per_read": 1},
}


def _force(knobs: dict) -> None:
    from mtdp.pipeline import context, passes

    if "partitions" in knobs:
        context.MIN_PARTITIONS = context.MAX_PARTITIONS = int(knobs["partitions"])
    if "maps" in knobs:
        context.MAX_SHUFFLE_MAPS = int(knobs["maps"])
    if "files_per_read" in knobs:
        passes.FILES_PER_READ = int(knobs["files_per_read"])


def data_half(fasta: str, model: str, out: str, setting: str) -> dict:
    """Stage ``fasta`` and find what ``model`` would embed of it (a fresh store), on a fresh
    local Ray, under ``SETTINGS[setting]``; the shuffles' sizes as the pipeline chose them."""
    import ray
    import ray.data

    from mtdp.models.registry import load_embedder
    from mtdp.pipeline import PassSettings, StageSettings, WorkDir, data_context, passes, stage
    from mtdp.runtime import init_ray
    from mtdp.store import EmbeddingStore, store_identity
    from .embed_job_perf import TreeRSS

    knobs = SETTINGS[setting]
    _force(knobs)
    sizes: list[tuple[str, int]] = []
    from_items, groupby = ray.data.from_items, ray.data.Dataset.groupby

    def counted_items(items, **kw):
        sizes.append(("maps", kw.get("override_num_blocks") or len(items)))
        return from_items(items, **kw)

    def counted_groupby(ds, key, **kw):
        sizes.append(("partitions", kw.get("num_partitions") or 0))
        return groupby(ds, key, **kw)

    ray.data.from_items, ray.data.Dataset.groupby = counted_items, counted_groupby
    embedder = load_embedder(model, device="cpu")
    identity, name = store_identity(embedder, "truncate"), embedder.name
    store = os.path.join(out, "store")
    EmbeddingStore(store).model(identity, name)
    init_ray()
    run = WorkDir(os.path.join(out, "work"))
    with TreeRSS() as rss:
        t0 = time.perf_counter()
        summary = stage(StageSettings(inputs=[fasta], max_len=None,
                                      range_mb=float(knobs.get("range_mb", 16.0)),
                                      progress=False), run, {})
        t1 = time.perf_counter()
        staged = {str(run.stage_file(int(s))): n for s, n in summary["shards"].items()}
        with data_context(progress_bars=False):
            _, counts = passes.lookups(staged, store, identity, name,
                                       PassSettings(spec=model, progress=False))
        t2 = time.perf_counter()
        ray.shutdown()
    maps = [n for k, n in sizes if k == "maps"]
    parts = [n for k, n in sizes if k == "partitions"]
    return {"setting": setting, "proteins": counts["n_rows"], "unique": counts["n_unique"],
            "to_embed": counts["n_todo"], "stage_s": t1 - t0, "lookup_s": t2 - t1,
            "stage_maps": maps[0], "stage_partitions": parts[0], "lookup_maps": maps[-1],
            "lookup_partitions": parts[-1], "groups": len(staged),
            "peak_mb": rss.rounded(), "largest": rss.other_worker}


#: ``--driver-cost``: (map tasks, partitions) of the pipeline's sort shuffle, 0 partitions
#: the map tasks alone (no shuffle).
DRIVER_COST_GRID = [(64, 64), (64, 512), (128, 256), (256, 256), (512, 256), (512, 512),
                    (512, 0)]


def driver_cost(maps: int, partitions: int, rows: int = 1_000_000) -> dict:
    """The driver's heap and the seconds of one ``groupby`` under the pipeline's Ray Data
    settings over ``rows`` tiny rows (two integers: the data itself costs nothing) in
    ``maps`` blocks and ``partitions`` partitions, on a fresh local Ray (call it in a fresh
    process: the peak is this process's)."""
    import pyarrow as pa
    import ray
    import ray.data

    from mtdp.pipeline import data_context
    from mtdp.runtime import init_ray
    from .embed_job_perf import TreeRSS
    from .memory import anon_bytes

    init_ray()
    base = anon_bytes()
    with TreeRSS(every=0.2) as rss:
        t0 = time.perf_counter()
        with data_context(progress_bars=False):
            ds = ray.data.range(rows, override_num_blocks=maps).map_batches(
                lambda b: {"k": b["id"] % 4096, "v": b["id"]}, batch_size=None)
            if partitions:
                ds = ds.groupby("k", num_partitions=partitions).map_groups(
                    lambda t: pa.table({"n": [t.num_rows]}), batch_format="pyarrow")
                seen = int(ds.sum("n"))
            else:
                seen = ds.materialize().count()
        seconds = time.perf_counter() - t0
    ray.shutdown()
    if seen != rows:
        raise RuntimeError(f"the shuffle returned {seen} rows of {rows}")
    return {"maps": maps, "partitions": partitions, "seconds": seconds,
            "driver_mb": max(0, round(rss.peak.get("driver_anon", 0.0) - base / 2**20))}
