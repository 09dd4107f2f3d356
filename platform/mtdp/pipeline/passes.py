"""One pass of the embedding pipeline: every distinct sequence of some staged shards that the
store does not hold for one model is embedded on an actor pool and committed to the store
(:mod:`.stages`). The embedding job runs one pass; precompute one per teacher, then builds
its dataset from the store.

A pass is idempotent and resumable by construction: each distinct sequence is looked up
before it is embedded, commits are ``merge_insert`` batches of ``commit_rows``, so a killed
pass loses at most one uncommitted batch per writer and a rerun computes only the rest.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from .stages import EmbedActor, StoreWriter, hashed, missing
from .workdir import log

#: CPUs of the store writer (one per pass).
WRITER_CPUS = 0.1


@dataclass
class PassSettings:
    """How one model embeds: the spec and its length policy, the actor pool, commits."""

    spec: str
    too_long: str = "truncate"
    max_len: int | None = None
    batch_tokens: int | None = None
    actors: int = 1
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 1.0
    commit_rows: int = 2048
    retries: int = 2
    per_residue: bool = False
    progress: bool = True
    label: str = "embed"


@dataclass
class PassResult:
    """What a pass did: proteins read, distinct sequences, computed now (and their residues,
    as the model saw them), reused from the store, the rejects (``seq_hash`` → reason); wall
    and actor seconds."""

    proteins: int = 0
    unique: int = 0
    computed: int = 0
    reused: int = 0
    residues: int = 0
    seconds: float = 0.0
    actor_seconds: float = 0.0
    rejects: dict[str, str] = field(default_factory=dict)
    commits: list[tuple[float, int]] = field(default_factory=list)

    @property
    def steady_proteins_per_s(self) -> float:
        """Proteins committed after the first commit over the time to the last one (actor
        start-up and model loading excluded); 0 with fewer than two commits."""
        done = sorted(self.commits)
        if len(done) > 1 and done[-1][0] > done[0][0]:
            return sum(n for _, n in done[1:]) / (done[-1][0] - done[0][0])
        return 0.0


def actor_resources(s: PassSettings) -> dict:
    """Resources per actor: a GPU each (``gpus_per_actor``) where the cluster has GPUs, else
    shares of the CPUs that leave one for Ray Data's read, hash and shuffle tasks and a tenth
    for the writer (actors holding every CPU starve those tasks and the pass waits forever)."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    if gpus > 0 and s.gpus_per_actor > 0:
        if s.gpus_per_actor * s.actors > gpus:
            print(f"[{s.label}] warning: {s.actors} actor(s) x {s.gpus_per_actor} GPU need "
                  f"{s.gpus_per_actor * s.actors:g} GPUs, the cluster has {gpus:g}: some "
                  "actors wait for an autoscaler (fewer actors, or a GPU fraction each)",
                  file=sys.stderr)
        num_cpus = s.cpus_per_actor or 1.0
        return {"num_cpus": num_cpus, "num_gpus": s.gpus_per_actor,
                "threads": max(1, int(num_cpus))}
    num_cpus = s.cpus_per_actor or max(0.1, min(float(int(cpus)),
                                                (cpus - 1 - WRITER_CPUS) / s.actors))
    return {"num_cpus": round(num_cpus, 3), "num_gpus": 0,
            "threads": max(1, int(round(num_cpus)))}


def _dataset(files: list[str], valid: int, store: str, identity: dict, name: str,
             s: PassSettings, faults: dict):
    import ray.data

    res = actor_resources(s)
    # Enough hash groups and small enough actor batches that every actor gets work (Ray
    # Data bundles blocks up to the batch size and hands a bundle to one actor), and no
    # group larger than a staged shard (each group is held in memory once).
    shards = max(1, len(files), 4 * s.actors)
    actor_batch = max(16, min(512, -(-int(valid) // (4 * s.actors))))
    log(s.label, s.progress, f"embedding with {name}: {s.actors} actor(s) ({res['num_cpus']} "
                             f"CPU, {res['num_gpus']} GPU, {res['threads']} thread(s) each)")
    ds = ray.data.read_parquet(files, columns=["sequence"],
                               override_num_blocks=max(1, len(files)))
    ds = ds.map_batches(hashed, batch_format="pyarrow", num_cpus=0.25,
                        fn_kwargs={"hash_shards": shards})
    ds = ds.groupby("hash_shard", num_partitions=min(shards, 64)).map_groups(
        missing, batch_format="pyarrow", num_cpus=0.25,
        fn_kwargs=dict(store=store, identity=identity, name=name, per_residue=s.per_residue))
    # Blocks are the unit handed to an actor: cut them to the actor batch.
    ds = ds.repartition(target_num_rows_per_block=actor_batch)
    ds = ds.map_batches(
        EmbedActor, batch_size=actor_batch, batch_format="pyarrow",
        fn_constructor_kwargs=dict(spec=s.spec, too_long=s.too_long, max_len=s.max_len,
                                   batch_tokens=s.batch_tokens, threads=res["threads"],
                                   retries=s.retries, per_residue=s.per_residue,
                                   faults=faults),
        compute=ray.data.ActorPoolStrategy(size=s.actors),
        num_cpus=res["num_cpus"], num_gpus=res["num_gpus"] or None)
    return ds.map_batches(StoreWriter, batch_size=s.commit_rows, batch_format="pyarrow",
                          num_cpus=WRITER_CPUS,
                          fn_constructor_kwargs=dict(store=store, identity=identity, name=name,
                                                     per_residue=s.per_residue, faults=faults),
                          compute=ray.data.ActorPoolStrategy(size=1))


def embed_pass(files: list[str], valid: int, store: str, identity: dict, name: str,
               s: PassSettings, faults: dict | None = None) -> PassResult:
    """Embed the distinct sequences of the staged ``files`` (``valid`` rows in all) that
    ``store`` does not hold for the model ``identity`` (display ``name``); see the module
    docstring. ``faults``: the injections of :mod:`.stages` (tests and drills only)."""
    import ray.data
    from ray.data.context import ShuffleStrategy
    from tqdm.auto import tqdm

    from ..store import EmbeddingStore, ResidueTable

    faults = dict(faults or {})
    if faults:
        faults["driver_pid"] = os.getpid()
    result = PassResult()
    if not files:
        return result
    # The store, the model's registration and its tables are created here, once, before the
    # pass's tasks open them concurrently.
    table = EmbeddingStore(store).model(identity, name)
    residues = ResidueTable(table) if s.per_residue else None
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False
    # The sort-based shuffle runs as plain tasks; the default hash shuffle starts aggregator
    # actors (a dozen worker processes: ~20 s of start-up on a 2-core machine).
    shuffle, ctx.shuffle_strategy = ctx.shuffle_strategy, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    bar = tqdm(total=valid, unit="prot", desc=s.label, disable=not s.progress, mininterval=1.0)
    t0 = time.perf_counter()
    try:
        for batch in _dataset(files, valid, store, identity, name, s, faults).iter_batches(
                batch_size=None, batch_format="pyarrow"):
            for r in batch.to_pylist():
                _add(result, r)
                bar.update(r["n_rows"])
                bar.set_postfix(computed=result.computed, reused=result.reused, refresh=False)
    finally:
        bar.close()
        ctx.enable_progress_bars, ctx.shuffle_strategy = bars, shuffle
    result.seconds = time.perf_counter() - t0
    if result.computed:  # compact the new fragments, refresh the seq_hash index
        table.optimize()
        if residues is not None:
            residues.optimize()
    return result


def _add(result: PassResult, r: dict) -> None:
    result.computed += r["computed"]
    result.residues += r["residues"]
    result.proteins += r["n_rows"]
    result.unique += r["n_unique"]
    result.reused += r["n_reused"]
    result.actor_seconds += r["seconds"]
    result.rejects.update(zip(r["rejected_hash"], r["rejected_reason"]))
    if r["computed"]:
        result.commits.append((r["finished_at"], r["computed"]))
