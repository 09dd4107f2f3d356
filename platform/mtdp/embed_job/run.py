"""The embedding job (:func:`run_embed_job`): proteins in any number of files → the store.

The job is the library's one embedding pipeline (:mod:`mtdp.pipeline`, which precompute runs
once per teacher) plus an ids table:

1. **stage** (:mod:`mtdp.pipeline.staging`): inputs read in parallel pieces, every record
   prepared by the one rule, duplicate ids and invalid records found across all inputs
   (errors listed, or skipped with ``--on-invalid skip``);
2. **embed** (one pass, :mod:`mtdp.pipeline.passes`): sequences hashed (SHA-256 of the
   prepared sequence) and grouped by hash, so each distinct sequence is seen once; those the
   store holds for this model are dropped; the rest run on an actor pool (one model per
   actor; a GPU each on GPU clusters, fractional CPUs otherwise) and are committed by one
   writer, batch by batch; a protein whose embedding fails is rejected with its reason;
3. **ids**: the run's ``id → seq_hash`` table in the store (``ids_<run_name>``), and
   ``WORKDIR/rejects.tsv`` listing every rejected record (input problems, failed embeddings).

Rerunning the same command after a kill recomputes nothing that was committed; a second run
over the same input computes nothing (but retries proteins whose embedding failed, as a
transient error may have caused it). Each job is an MLflow run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..io import write_json
from ..pipeline import PassSettings, StageSettings, WorkDir, embed_pass, stage
from ..pipeline.workdir import log, write_rejects_tsv
from ..runtime import init_ray
from .config import EmbedJobConfig

#: Environment variable with a JSON object of fault injections, for tests and drills only:
#: those of :mod:`mtdp.pipeline.stages` (e.g. ``kill_driver_after_batches``: after its N-th
#: commit the writer SIGKILLs the job's driver and itself).
FAULTS_ENV = "MTDP_EMBED_FAULTS"


@dataclass
class EmbedJobResult:
    """What a job did: proteins read, distinct sequences, computed now, reused from the
    store, rejected records (input problems and failed embeddings); throughput of this run."""

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


def _stage(cfg: EmbedJobConfig, run: WorkDir) -> dict:
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
                             range_mb=cfg.range_mb, progress=cfg.progress, label="embed")
    return stage(settings, run, state)


def _embed(cfg: EmbedJobConfig, run: WorkDir, summary: dict, table, result: EmbedJobResult):
    identity = next(m["identity"] for m in table.store.models()
                    if m["model_key"] == table.key)
    settings = PassSettings(spec=cfg.model, too_long=cfg.too_long, max_len=cfg.max_len,
                            batch_tokens=cfg.batch_tokens, actors=cfg.actors,
                            cpus_per_actor=cfg.cpus_per_actor,
                            gpus_per_actor=cfg.gpus_per_actor, commit_rows=cfg.commit_rows,
                            progress=cfg.progress, label="embed",
                            precision=cfg.precision)
    staged = {str(run.stage_file(int(s))): n for s, n in summary["shards"].items()}
    done = embed_pass(staged, cfg.store, identity, table.name, settings,
                      json.loads(os.environ.get(FAULTS_ENV) or "{}"))
    result.proteins, result.unique = done.proteins, done.unique
    result.computed, result.reused, result.seconds = done.computed, done.reused, done.seconds
    result.extra["actor_seconds"] = done.actor_seconds
    result.extra["merged_commits"] = done.merged_commits
    return done.rejects


#: Rows of the ids table per commit: a commit per staged shard made a fragment each, and Lance's
#: manifests (one kept per version, each listing every fragment) grow as the square of the
#: commits (60 M proteins: 14,650 shards, ~9 GB of manifests); ~25 MB of ids and hashes.
IDS_COMMIT_ROWS = 1 << 18


def _write_ids(cfg: EmbedJobConfig, run: WorkDir, summary: dict, store,
               failed: dict[str, str]) -> list[dict]:
    """The run's ids table, from the staged shards (bounded memory: a few shards at a time,
    committed every :data:`IDS_COMMIT_ROWS` rows); proteins whose embedding failed
    (``failed``: hash → reason) are left out of it and returned as rejects, named by id,
    file and record."""
    import pyarrow.parquet as pq

    from ..store.keys import seq_hash

    index = {os.path.abspath(p): i for i, p in enumerate(cfg.inputs)}
    rejects, commits, pending = [], 0, {"ids": [], "hashes": [], "order": []}

    def commit() -> None:
        nonlocal commits
        store.write_ids(cfg.run_name, pending["ids"], pending["hashes"], append=commits > 0,
                        order=pending["order"])
        commits += 1
        for v in pending.values():
            v.clear()

    for s in summary["shards"]:
        t = pq.read_table(run.stage_file(int(s)), columns=["id", "sequence", "source", "record"])
        ids, hashes = t.column("id").to_pylist(), [seq_hash(q) for q in
                                                   t.column("sequence").to_pylist()]
        sources, records = t.column("source").to_pylist(), t.column("record").to_pylist()
        for i, h in enumerate(hashes):
            if h in failed:
                rejects.append({"id": ids[i], "source": sources[i], "record": records[i],
                                "stage": "embed", "reason": failed[h]})
                continue
            pending["ids"].append(ids[i])
            pending["hashes"].append(h)
            pending["order"].append((index.get(sources[i], 0) << 40) + records[i])
        if len(pending["ids"]) >= IDS_COMMIT_ROWS:
            commit()
    if pending["ids"] or not commits:
        commit()
    return rejects


def _refuse_too_long(cfg: EmbedJobConfig, run: WorkDir, summary: dict, limit: int) -> None:
    """``--too-long error``: stop before anything is embedded if any staged protein is
    longer than the limit, listing every one in ``WORKDIR/input-problems.tsv``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ..pipeline.staging import PROBLEMS_FILE
    from ..sequences import SequenceError

    listing = run.root / PROBLEMS_FILE
    listing.unlink(missing_ok=True)  # staging passed: only an earlier refusal's list is here
    if cfg.too_long != "error":
        return
    long = []
    for s in summary["shards"]:
        t = pq.read_table(run.stage_file(int(s)), columns=["id", "length", "source", "record"])
        long += t.filter(pc.greater(t["length"], limit)).to_pylist()
    if not long:
        return
    long.sort(key=lambda r: (r["source"], r["record"]))
    write_rejects_tsv(listing, [{**r, "stage": "too-long", "reason": f"{r['length']} residues "
                                 f"> the limit of {limit}"} for r in long])
    first = long[0]
    raise SequenceError(
        f"{len(long)} protein(s) longer than the model's limit of {limit} residues "
        f"(--too-long error); first: {first['length']} residues. All are listed in {listing}. "
        "Nothing was embedded; use --too-long truncate or window, or shorten them",
        source=first["source"], record=first["record"], seq_id=first["id"])


def _identity(spec: str, too_long: str, max_len: int | None) -> tuple[dict, str]:
    """The model's store identity and name (computed in a Ray task: loading a big teacher
    on the driver would cost its memory there; the task's process exits after it, see
    :func:`run_embed_job`)."""
    from ..models.registry import load_embedder
    from ..store.keys import store_identity

    embedder = load_embedder(spec, device="cpu")
    return store_identity(embedder, too_long, max_len=max_len), embedder.name


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
    # max_calls=1: the worker that loaded the model exits, and no staging or lookup task
    # inherits its heap (torch and the weights: +300 MB with the tiny student, GBs for ESM-2).
    identity, name = ray_get(ray.remote(num_cpus=0.5, max_calls=1)(_identity).remote(
        cfg.model, cfg.too_long, cfg.max_len))
    run = WorkDir(cfg.workdir)
    summary = _stage(cfg, run)
    _refuse_too_long(cfg, run, summary, int(identity["max_len"]))
    table = store.model(identity, name)
    result = EmbedJobResult(cfg.run_name, cfg.store, table.key)
    if cfg.track:
        _tracked(cfg, run, summary, table, result)
    else:
        _run(cfg, run, summary, table, result)
    log("embed", cfg.progress,
        f"done: {result.proteins:,} proteins ({result.unique:,} distinct sequences): "
        f"{result.computed:,} computed, {result.reused:,} from the store, "
        f"{result.rejected:,} rejected, {result.proteins_per_s:.1f} proteins/s -> "
        f"{cfg.store} (ids_{cfg.run_name})")
    return result


def _run(cfg, run, summary, table, result) -> None:
    failed = _embed(cfg, run, summary, table, result)
    rejects = list(summary["rejects"]) + _write_ids(cfg, run, summary, table.store, failed)
    result.rejected = len(rejects)
    listing = run.root / "rejects.tsv"
    if rejects:
        write_rejects_tsv(listing, rejects)
        log("embed", cfg.progress, f"{len(rejects):,} record(s) rejected, listed with their "
                                   f"reasons in {listing}")
    else:
        listing.unlink(missing_ok=True)  # a rerun that rejects nothing leaves no stale list


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
