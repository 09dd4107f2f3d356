"""One pass of the embedding pipeline: every distinct sequence of some staged shards that the
store does not hold for one model is embedded on an actor pool and committed to the store
(:mod:`.stages`). The embedding job runs one pass; precompute one per teacher, then builds
its dataset from the store.

A pass is idempotent and resumable by construction: each distinct sequence is looked up
before it is embedded (after the model's table versions are noted: the writer appends only
while nothing else has committed since), commits are batches of ``commit_rows``, so a killed
pass loses at most one uncommitted batch per writer and a rerun computes only the rest.

A pass runs in two halves: plain tasks find the sequences to embed (materialized, so the
counts are known first and a pass with nothing to embed starts no actor), then the actor pool
and the writer embed and commit them. An actor or writer whose process dies does not restart
in place (Ray Data can hang on an actor that died mid-task): the pass starts again, and what
was committed is not embedded again.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from .context import data_context, shuffle_maps, shuffle_partitions
from .stages import COUNTS, EmbedActor, StoreWriter, group_counts, hashed, missing
from .workdir import log

#: CPUs of the store writer (one per pass).
WRITER_CPUS = 0.1
#: Times a pass starts again after one of its actors died.
RESTARTS = 3
#: Staged shards read and hashed per task: a bounded task (~20 MB of sequences at the default
#: shard size), and few enough blocks that the hash shuffle stays cheap (one per shard made
#: its map stage ~2x slower at 1 M proteins); more per task beyond
#: :data:`~.context.MAX_SHUFFLE_MAPS` tasks.
FILES_PER_READ = 8


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
    #: Per-residue states kept as means over windows of this many residues (1: each residue).
    residue_window: int = 1
    #: The actors' arithmetic on CPU (:meth:`mtdp.models.base.Embedder.set_precision`).
    precision: str = "fp32"
    progress: bool = True
    label: str = "embed"


@dataclass
class PassResult:
    """What a pass did: proteins read, distinct sequences, computed now (and their residues,
    as the model saw them), reused from the store, the rejects (``seq_hash`` → reason); wall
    and actor seconds; commits merged rather than appended (another process wrote the
    model's table during the pass)."""

    proteins: int = 0
    unique: int = 0
    computed: int = 0
    reused: int = 0
    residues: int = 0
    seconds: float = 0.0
    actor_seconds: float = 0.0
    rejects: dict[str, str] = field(default_factory=dict)
    commits: list[tuple[float, int]] = field(default_factory=list)
    merged_commits: int = 0

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
    if s.cpus_per_actor and cpus - s.actors * s.cpus_per_actor - WRITER_CPUS < 1:
        raise ValueError(
            f"[{s.label}] {s.actors} actor(s) x {s.cpus_per_actor:g} CPU leave "
            f"{cpus - s.actors * s.cpus_per_actor - WRITER_CPUS:.2g} of the cluster's "
            f"{cpus:g} CPUs to Ray Data's tasks, which need 1: the pass would wait forever. "
            "Lower cpus_per_actor (the actors' threads use the whole machine anyway)")
    num_cpus = s.cpus_per_actor or max(0.1, min(float(int(cpus)),
                                                (cpus - 1 - WRITER_CPUS) / s.actors))
    # Threads: the actors' share of the machine, the CPU kept for the read and hash tasks
    # included (they run before the actors, not beside them): 2 on a 2-CPU machine, not 1.
    threads = s.cpus_per_actor or (cpus - WRITER_CPUS) / s.actors
    return {"num_cpus": round(num_cpus, 3), "num_gpus": 0,
            "threads": max(1, int(round(threads)))}


#: Seconds a pass waits for its reservation before it says what it waits for (then again).
WAIT_NOTICE_S = 60


@contextmanager
def _reserved(res: dict, s: PassSettings):
    """The pass's actors and writer, reserved as two placement groups for one attempt, and
    removed when it ends however it ends: removing them kills whatever still runs in them.
    Without it the actors of a failed pass outlive it for as long as something (a kept
    exception, a reference cycle) holds their handles, and their CPUs starve the next pass's
    tasks. Yields the scheduling strategies of the actor pool and of the writer."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = {"CPU": res["num_cpus"], **({"GPU": res["num_gpus"]} if res["num_gpus"] else {})}
    groups = [placement_group([actor] * s.actors, strategy="PACK"),
              placement_group([{"CPU": WRITER_CPUS}])]
    try:
        waited = 0
        while not all(pg.wait(timeout_seconds=WAIT_NOTICE_S) for pg in groups):
            waited += WAIT_NOTICE_S
            log(s.label, True, f"waited {waited} s for the pass's resources ({s.actors} x "
                               f"{actor} and {WRITER_CPUS} CPU for the writer): is another "
                               "job holding them, or is the cluster scaling up?")
        yield [PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=False)
               for pg in groups]
    finally:
        for pg in groups:
            remove_placement_group(pg)


def lookups(staged: dict[str, int], store: str, identity: dict, name: str, s: PassSettings):
    """The pass's first half, plain tasks only: the ``staged`` shards' rows (file → its rows,
    as staging counted them) → hashes → one group per hash shard → its distinct sequences
    the store lacks (plus each group's counts). Materialized: the shuffle holds all of it
    anyway, the counts are known before any actor starts, and a pass with nothing to embed
    starts none."""
    import ray.data

    files = list(staged)
    # Enough hash groups that every actor gets work, and no group larger than a staged
    # shard (each group is held in memory once).
    shards = max(1, len(files), 4 * s.actors)
    reads = shuffle_maps(-(-len(files) // FILES_PER_READ))
    rows = sum(staged.values())
    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=reads)
    # A block per task (batch_size=None): a batch size would bundle a smaller block with the
    # next, and the task would hold twice the files.
    ds = ds.map_batches(hashed, batch_size=None, batch_format="pyarrow", num_cpus=0.25,
                        fn_kwargs={"hash_shards": shards})
    ds = ds.groupby("hash_shard", num_partitions=shuffle_partitions(shards, rows)).map_groups(
        missing, batch_format="pyarrow", num_cpus=0.25,
        fn_kwargs=dict(store=store, identity=identity, name=name, per_residue=s.per_residue,
                       residue_window=s.residue_window))
    todo = ds.materialize()
    counts = {k: 0 for k in (*COUNTS, "n_todo")}
    for row in todo.map_batches(group_counts, batch_size=None, batch_format="pyarrow",
                                num_cpus=0.25).iter_rows():
        for k in counts:
            counts[k] += int(row[k])
    return todo, counts


#: Ray 2.60 takes ``max_restarts`` only as an extra keyword (the deprecated
#: ``ray_remote_args`` route, no named parameter yet): check when Ray passes 2.63.
_NO_RESTART = {"max_restarts": 0}


def _embedded(todo, n_todo: int, store: str, identity: dict, name: str, s: PassSettings,
              faults: dict, res: dict, placement: list, since: dict):
    """The pass's second half: the sequences to embed → the model's actor pool → the store
    writer, each in its reservation (``placement``, :func:`_reserved`). Neither restarts
    after its process died (``max_restarts=0``): Ray Data's restart of an actor that died
    mid-task can hang the dataset, so the death surfaces as a ``RayActorError`` and
    :func:`embed_pass` starts the pass again."""
    import warnings

    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    # Small enough actor batches that every actor gets work (Ray Data bundles blocks up to
    # the batch size and hands a bundle to one actor); blocks cut to that size.
    actor_batch = max(16, min(512, -(-int(n_todo) // (4 * s.actors))))
    log(s.label, s.progress, f"embedding {n_todo:,} sequence(s) with {name}: {s.actors} "
                             f"actor(s) ({res['num_cpus']} CPU, {res['num_gpus']} GPU, "
                             f"{res['threads']} thread(s) each)")
    ds = todo.repartition(target_num_rows_per_block=actor_batch)
    with warnings.catch_warnings():  # the deprecated keyword route of _NO_RESTART, only here
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated",
                                category=RayDeprecationWarning)
        ds = ds.map_batches(
            EmbedActor, batch_size=actor_batch, batch_format="pyarrow",
            fn_constructor_kwargs=dict(spec=s.spec, too_long=s.too_long, max_len=s.max_len,
                                       batch_tokens=s.batch_tokens, threads=res["threads"],
                                       retries=s.retries, per_residue=s.per_residue,
                                       residue_window=s.residue_window, faults=faults,
                                       precision=s.precision),
            compute=ray.data.ActorPoolStrategy(size=s.actors), **_NO_RESTART,
            scheduling_strategy=placement[0],
            num_cpus=res["num_cpus"], num_gpus=res["num_gpus"] or None)
        return ds.map_batches(
            StoreWriter, batch_size=s.commit_rows, batch_format="pyarrow",
            num_cpus=WRITER_CPUS, **_NO_RESTART, scheduling_strategy=placement[1],
            fn_constructor_kwargs=dict(store=store, identity=identity, name=name,
                                       since=since, per_residue=s.per_residue, faults=faults,
                                       residue_window=s.residue_window),
            compute=ray.data.ActorPoolStrategy(size=1))


def embed_pass(staged: dict[str, int], store: str, identity: dict, name: str,
               s: PassSettings, faults: dict | None = None) -> PassResult:
    """Embed the distinct sequences of the ``staged`` shards (file → its rows, as staging
    counted them) that ``store`` does not hold for the model ``identity`` (display
    ``name``); see the module docstring. An actor or writer
    that dies (OOM kill, lost node) starts the pass again, up to :data:`RESTARTS` times:
    what was committed is kept and not embedded again. ``faults``: the injections of
    :mod:`.stages` (tests and drills only)."""
    from ray.exceptions import RayActorError

    from ..store import EmbeddingStore, ResidueTable

    faults = dict(faults or {})
    if faults:
        faults["driver_pid"] = os.getpid()
    result = PassResult()
    if not staged:
        return result
    # The store, the model's registration and its tables are created here, once, before the
    # pass's tasks open them concurrently.
    table = EmbeddingStore(store).model(identity, name)
    residues = ResidueTable(table, s.residue_window) if s.per_residue else None
    t0 = time.perf_counter()
    with data_context(progress_bars=False):  # one bar of ours instead of one per operator
        for attempt in range(RESTARTS + 1):
            before = result.computed
            since = {"vectors": table.version(),  # before the lookups: see StoreWriter
                     "residues": residues.version() if residues is not None else None}
            todo, counts = lookups(staged, store, identity, name, s)
            result.proteins, result.unique = counts["n_rows"], counts["n_unique"]
            result.reused = counts["n_reused"] - before  # committed by an earlier attempt
            if not counts["n_todo"]:
                break
            res = actor_resources(s)
            try:
                with _reserved(res, s) as placement:
                    _run(_embedded(todo, counts["n_todo"], store, identity, name, s, faults,
                                   res, placement, since), result, counts["n_todo"], s)
                break
            except RayActorError as exc:
                if attempt == RESTARTS:
                    raise RuntimeError(
                        f"[{s.label}] an actor of the pass died {RESTARTS + 1} times; last: "
                        f"{str(exc).splitlines()[0]}. Committed embeddings are kept: rerun "
                        "the same command to resume") from exc
                log(s.label, True, f"an actor died ({str(exc).splitlines()[0]}); starting the "
                                   f"pass again ({attempt + 1} of {RESTARTS}): the "
                                   f"{result.computed:,} committed embedding(s) are kept")
    result.seconds = time.perf_counter() - t0
    if result.computed:
        _optimize(store, identity, name, s.residue_window if s.per_residue else 0)
    return result


def _optimize(store: str, identity: dict, name: str, residue_window: int) -> None:
    """The pass's end: the new fragments compacted and the ``seq_hash`` index brought up to
    date, in a task of its own whose process exits after it (``max_calls=1``): the first
    index of a table costs memory in proportion to the table (+415 MB at 1 M rows), which the
    driver would otherwise keep."""
    import ray

    from ..runtime import ray_get

    def optimize() -> None:
        from ..store import EmbeddingStore, ResidueTable

        table = EmbeddingStore(store).model(identity, name)
        table.optimize()
        if residue_window:  # 0: no per-residue states in this pass
            ResidueTable(table, residue_window).optimize()

    ray_get(ray.remote(num_cpus=1, max_calls=1)(optimize).remote())


def _run(ds, result: PassResult, total: int, s: PassSettings) -> None:
    """Drain the writer's output into ``result``, with one bar: sequences embedded (or
    rejected) of those the pass had to embed."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="seq", desc=s.label, disable=not s.progress, mininterval=1.0)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for r in batch.to_pylist():
                result.computed += r["computed"]
                result.residues += r["residues"]
                result.actor_seconds += r["seconds"]
                result.merged_commits += r["merged"]
                result.rejects.update(zip(r["rejected_hash"], r["rejected_reason"]))
                if r["computed"]:
                    result.commits.append((r["finished_at"], r["computed"]))
                bar.update(r["computed"] + len(r["rejected_hash"]))
                bar.set_postfix(reused=result.reused, failed=len(result.rejects),
                                refresh=False)
    finally:
        bar.close()
