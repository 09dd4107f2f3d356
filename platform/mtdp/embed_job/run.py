"""The embedding job (:func:`run_embed_job`): proteins in any number of files → the store.

1. **stage** (shared with precompute, :mod:`mtdp.precompute.stage`): inputs read in parallel
   pieces, every record prepared by the one rule, duplicate ids and invalid records found
   across all inputs (errors listed, or skipped with ``--on-invalid skip``);
2. **embed** (Ray Data): sequences hashed (SHA-256 of the prepared sequence) and grouped by
   hash, so each distinct sequence is seen once; those the store holds for this model are
   dropped; the rest run on an actor pool (one model per actor; a GPU each on GPU clusters,
   fractional CPUs otherwise) and are committed by one writer, batch by batch;
3. **ids**: the run's ``id → seq_hash`` table in the store (``ids_<run_name>``).

Rerunning the same command after a kill recomputes nothing that was committed; a second run
over the same input computes nothing. Each job is an MLflow run.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

from ..io import write_json
from ..precompute.rundir import RunDir, write_rejects_tsv
from ..precompute.stage import StageSettings, stage
from ..runtime import init_ray
from .config import EmbedJobConfig
from .pipeline import FAULTS_ENV, EmbedActor, StoreWriter, hashed, missing


@dataclass
class EmbedJobResult:
    """What a job did: proteins read, distinct sequences, computed now, reused from the
    store, rejected records; throughput of this run."""

    run_name: str
    store: str
    model_key: str
    proteins: int = 0
    unique: int = 0
    computed: int = 0
    reused: int = 0
    rejected: int = 0
    seconds: float = 0.0
    mlflow_run_id: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def proteins_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0


WRITER_CPUS = 0.1


def _log(cfg: EmbedJobConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[embed] {msg}", file=sys.stderr, flush=True)


def _stage(cfg: EmbedJobConfig, run: RunDir) -> dict:
    """Stage the inputs (reused when the same inputs and policies were staged before)."""
    fp = {"inputs": [[os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns]
                     for p in cfg.inputs], "on_invalid": cfg.on_invalid,
          "on_duplicate": cfg.on_duplicate, "shard_size": cfg.shard_size}
    if run.state.is_file() and json.loads(run.state.read_text()).get("fingerprint") != fp:
        import shutil

        shutil.rmtree(run.work, ignore_errors=True)  # other inputs: stage afresh
    state = json.loads(run.state.read_text()) if run.state.is_file() else {"fingerprint": fp}
    write_json(run.state, state)
    settings = StageSettings(inputs=list(cfg.inputs), max_len=None, on_invalid=cfg.on_invalid,
                             on_duplicate=cfg.on_duplicate, shard_size=cfg.shard_size,
                             range_mb=cfg.range_mb, progress=cfg.progress)
    return stage(settings, run, state)


def _resources(cfg: EmbedJobConfig) -> dict:
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    if gpus > 0 and cfg.gpus_per_actor > 0:
        num_cpus = cfg.cpus_per_actor or 1.0
        return {"num_cpus": num_cpus, "num_gpus": cfg.gpus_per_actor,
                "threads": max(1, int(num_cpus))}
    # Leave one CPU for Ray Data's read, hash and shuffle tasks and a tenth for the writer:
    # actors holding every CPU starve those tasks and the job waits forever.
    num_cpus = cfg.cpus_per_actor or max(0.1, min(float(int(cpus)),
                                                  (cpus - 1 - WRITER_CPUS) / cfg.actors))
    return {"num_cpus": round(num_cpus, 3), "num_gpus": 0,
            "threads": max(1, int(round(num_cpus)))}


def _dataset(cfg: EmbedJobConfig, run: RunDir, summary: dict, identity: dict, name: str):
    import ray.data

    files = [str(run.stage_file(int(s))) for s in summary["shards"]]
    res = _resources(cfg)
    # Enough hash groups and small enough actor batches that every actor gets work (Ray
    # Data bundles blocks up to the batch size and hands a bundle to one actor), and no
    # group larger than a staged shard (each group is held in memory once).
    shards = max(1, len(files), 4 * cfg.actors)
    actor_batch = max(16, min(512, -(-int(summary["valid"]) // (4 * cfg.actors))))
    _log(cfg, f"embedding with {cfg.actors} actor(s) ({res['num_cpus']} CPU, "
              f"{res['num_gpus']} GPU, {res['threads']} thread(s) each)")
    ds = ray.data.read_parquet(files, columns=["sequence"],
                               override_num_blocks=max(1, len(files)))
    ds = ds.map_batches(hashed, batch_format="pyarrow", num_cpus=0.25,
                        fn_kwargs={"hash_shards": shards})
    ds = ds.groupby("hash_shard", num_partitions=min(shards, 64)).map_groups(
        missing, batch_format="pyarrow", num_cpus=0.25,
        fn_kwargs=dict(store=cfg.store, identity=identity, name=name))
    # Blocks are the unit handed to an actor: cut them to the actor batch.
    ds = ds.repartition(target_num_rows_per_block=actor_batch)
    ds = ds.map_batches(
        EmbedActor, batch_size=actor_batch, batch_format="pyarrow",
        fn_constructor_kwargs=dict(spec=cfg.model, too_long=cfg.too_long, max_len=cfg.max_len,
                                   batch_tokens=cfg.batch_tokens, threads=res["threads"]),
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=res["num_cpus"], num_gpus=res["num_gpus"] or None)
    faults = json.loads(os.environ.get(FAULTS_ENV) or "{}")
    if faults:
        faults["driver_pid"] = os.getpid()
    return ds.map_batches(StoreWriter, batch_size=cfg.commit_rows, batch_format="pyarrow",
                          num_cpus=WRITER_CPUS,
                          fn_constructor_kwargs=dict(store=cfg.store, identity=identity,
                                                     name=name, faults=faults),
                          compute=ray.data.ActorPoolStrategy(size=1))


def _embed(cfg: EmbedJobConfig, run: RunDir, summary: dict, table, result: EmbedJobResult):
    from tqdm.auto import tqdm

    identity = next(m["identity"] for m in table.store.models()
                    if m["model_key"] == table.key)
    bar = tqdm(total=summary["valid"], unit="prot", desc="embed", disable=not cfg.progress,
               mininterval=1.0)
    t0 = time.perf_counter()
    for batch in _dataset(cfg, run, summary, identity, table.name).iter_batches(
            batch_size=None, batch_format="pyarrow"):
        for r in batch.to_pylist():
            result.computed += r["computed"]
            result.proteins += r["n_rows"]
            result.unique += r["n_unique"]
            result.reused += r["n_reused"]
            result.extra["actor_seconds"] = result.extra.get("actor_seconds", 0.0) + r["seconds"]
            result.extra.setdefault("first_commit_s", time.perf_counter() - t0)
            bar.update(r["n_rows"])
            bar.set_postfix(computed=result.computed, reused=result.reused, refresh=False)
    bar.close()
    result.seconds = time.perf_counter() - t0


def _write_ids(cfg: EmbedJobConfig, run: RunDir, summary: dict, store) -> None:
    """The run's ids table, from the staged shards (bounded memory: one shard at a time)."""
    import pyarrow.parquet as pq

    from ..store.keys import seq_hash

    index = {os.path.abspath(p): i for i, p in enumerate(cfg.inputs)}
    first = True
    for s in summary["shards"]:
        t = pq.read_table(run.stage_file(int(s)), columns=["id", "sequence", "source", "record"])
        order = [(index.get(src, 0) << 40) + rec for src, rec in
                 zip(t.column("source").to_pylist(), t.column("record").to_pylist())]
        store.write_ids(cfg.run_name, t.column("id").to_pylist(),
                        [seq_hash(q) for q in t.column("sequence").to_pylist()],
                        append=not first, order=order)
        first = False
    if first:
        store.write_ids(cfg.run_name, [], [])


def _identity(spec: str, too_long: str, max_len: int | None) -> tuple[dict, str]:
    """The model's store identity and name (computed in a Ray task: loading a big teacher
    on the driver would cost its memory there)."""
    from ..models.registry import load_embedder
    from ..store.keys import store_identity

    embedder = load_embedder(spec, device="cpu")
    identity = store_identity(embedder, too_long)
    if max_len is not None:
        identity["max_len"] = min(max_len, identity["max_len"])
    return identity, embedder.name


def run_embed_job(cfg: EmbedJobConfig) -> EmbedJobResult:
    """Run (or resume) the job; see the module docstring.

    Raises:
        SequenceError: bad input records under the ``error`` policies (all listed in
            ``WORKDIR/input-problems.tsv``), before anything is embedded.
        StoreError: the store is not one, is damaged, or holds another model under the key.
        ValueError, FileNotFoundError: a bad setting, a missing input, an unknown model.
    """
    import ray

    from ..models.registry import resolve
    from ..runtime import ray_get
    from ..store import EmbeddingStore

    cfg.validate()
    cfg = cfg.resolved()
    resolve(cfg.model)
    store = EmbeddingStore(cfg.store)  # a foreign or damaged store is refused before work
    init_ray(cfg.ray_address)
    identity, name = ray_get(ray.remote(num_cpus=0.5)(_identity).remote(
        cfg.model, cfg.too_long, cfg.max_len))
    table = store.model(identity, name)
    run = RunDir(cfg.workdir)
    summary = _stage(cfg, run)
    if summary["rejects"]:
        write_rejects_tsv(run.root / "rejects.tsv", summary["rejects"])
    result = EmbedJobResult(cfg.run_name, cfg.store, table.key, rejected=len(summary["rejects"]))
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False
    # The sort-based shuffle runs as plain tasks; the default hash shuffle starts aggregator
    # actors (a dozen worker processes: ~20 s of start-up on a 2-core machine).
    shuffle, ctx.shuffle_strategy = ctx.shuffle_strategy, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        if cfg.track:
            _tracked(cfg, run, summary, table, result)
        else:
            _run(cfg, run, summary, table, result)
    finally:
        ctx.enable_progress_bars, ctx.shuffle_strategy = bars, shuffle
    _log(cfg, f"done: {result.proteins:,} proteins ({result.unique:,} distinct sequences): "
              f"{result.computed:,} computed, {result.reused:,} from the store, "
              f"{result.rejected:,} rejected, {result.proteins_per_s:.1f} proteins/s -> "
              f"{cfg.store} (ids_{cfg.run_name})")
    return result


def _run(cfg, run, summary, table, result) -> None:
    _embed(cfg, run, summary, table, result)
    _write_ids(cfg, run, summary, table.store)
    table.optimize()


def _tracked(cfg, run, summary, table, result) -> None:
    """The job as one MLflow run: settings, counts, throughput, the store."""
    import mlflow

    from ..tracking import setup_mlflow

    setup_mlflow(cfg.experiment)
    with mlflow.start_run(run_name=f"embed-{cfg.run_name}") as mrun:
        mlflow.log_params({"model": cfg.model, "store": cfg.store, "model_key": table.key,
                           "inputs": ",".join(cfg.inputs)[:6000], "too_long": cfg.too_long,
                           "max_len": cfg.max_len, "actors": cfg.actors,
                           "run_name": cfg.run_name, "on_invalid": cfg.on_invalid,
                           "on_duplicate": cfg.on_duplicate})
        _run(cfg, run, summary, table, result)
        mlflow.log_metrics({"proteins": result.proteins, "unique": result.unique,
                            "computed": result.computed, "reused": result.reused,
                            "rejected": result.rejected, "seconds": result.seconds,
                            "proteins_per_s": result.proteins_per_s})
        result.mlflow_run_id = mrun.info.run_id
