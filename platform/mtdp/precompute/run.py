"""Teacher precompute on Ray Data: proteins → one Parquet dataset of teacher embeddings.

The output is exactly the contract of :mod:`mtdp.teacher_data` (``RUN/data/*.parquet`` plus
``RUN/manifest.json`` written last). It is the library's one embedding pipeline
(:mod:`mtdp.pipeline`, the embedding job's) plus what distillation needs: splits, shards,
per-feature statistics, the manifest. Three phases, each restartable:

1. **Stage** (:mod:`mtdp.pipeline.staging`): inputs are cut into pieces that tasks parse in
   parallel; every record goes through :func:`mtdp.sequences.prepare` (the student's code
   path, truncated to ``max_len``), gets its split (:func:`mtdp.teacher_data.split_of`) and a
   shard from a stable hash of its id; duplicates are found across all inputs. Invalid
   records and duplicate ids are errors by default (all of them listed), or rejects
   (``on_invalid="skip"``, ``on_duplicate="keep-first"``).
2. **Embed** (:func:`mtdp.pipeline.embed_pass`, one pass per teacher): the distinct sequences
   of the unfinished shards that the store does not hold for the teacher run on its actor
   pool (one model load per actor; ``num_gpus`` per actor on GPU clusters, a fraction of a
   CPU otherwise) in length-sorted token-budget batches and are committed to the embedding
   store (``RUN/work/store``, or a shared ``--store``) batch by batch. A failing batch is
   retried by halving down to single proteins; a protein that still fails becomes a reject
   with its reason. Dead actors are restarted and their work retried by Ray.
3. **Assemble** (:mod:`.shards`): each unfinished shard is built from its staged rows and the
   teachers' vectors in the store (float16; a vector that overflows float16 is a reject) —
   a done-marker with its stats, then the Parquet file via temp file + rename. A finished
   shard is never rewritten; a rerun with the same arguments recomputes nothing committed.
   When every shard is finished, the rejects file and the manifest (per-feature train
   mean/std merged from the shard markers) are written.

Everything is tracked in one MLflow run per invocation.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..io import sha256_file, write_json
from ..runtime import init_ray, ray_get
from ..teacher_data import (MANIFEST_FILE, Manifest, ManifestMismatch, residue_column,
                            teacher_column)
from .config import PrecomputeConfig
from .pipeline import embed_shards, read_passes, store_uri
from .rundir import REJECTS_FILE, RunDir, claim, drop_damaged, fingerprint, log
from .rundir import faults as read_faults
from .shards import finalize
from ..pipeline import StageSettings, data_context, stage


def _describe_teacher(spec: str, max_len: int) -> dict:
    """Load a teacher (in a Ray task, not on the driver) and return its provenance and its
    store identity (its vectors of sequences cut to ``max_len``)."""
    from ..models.teachers import load_teacher
    from ..store.keys import store_identity

    teacher = load_teacher(spec)
    info = teacher.describe()
    info["spec"] = spec
    info["identity"] = store_identity(teacher, "truncate", max_len=max_len)
    return info


def resolve_teachers(cfg: PrecomputeConfig, run: RunDir):
    """Teacher provenance (``describe()`` + column) for every spec; returns a callable that
    waits for the result, so the model loads in Ray tasks overlap with staging."""
    import ray

    if run.teachers.is_file():
        cached = json.loads(run.teachers.read_text())
        if [t["spec"] for t in cached] == cfg.teachers and all("identity" in t for t in cached):
            for t in cached:  # a checkpoint replaced under the same path must not be mixed in
                if t.get("sha256") and os.path.isfile(t["source"]) \
                        and sha256_file(t["source"]) != t["sha256"]:
                    raise ManifestMismatch(f"teacher checkpoint {t['source']} changed since this "
                                           "run started (sha256 differs); use a new --output")
            return lambda: cached
    # max_calls=1: each worker that loaded a teacher exits, and no pipeline task inherits
    # its heap (GBs for ESM-2 650M).
    task = ray.remote(num_cpus=0.5, max_calls=1)(_describe_teacher)
    futures = [task.remote(s, cfg.max_len) for s in cfg.teachers]

    def wait() -> list[dict]:
        infos = ray_get(futures)
        names = [t["name"] for t in infos]
        columns = [teacher_column(n) for n in names]
        if len(set(columns)) != len(columns):
            raise ValueError(f"teachers {cfg.teachers} give clashing names {names}; rename a "
                             "checkpoint file")
        for t in infos:
            if cfg.max_len > t["max_len"]:
                raise ValueError(f"max_len {cfg.max_len} exceeds teacher {t['name']}'s limit "
                                 f"of {t['max_len']} residues; lower --max-len")
            t["column"] = teacher_column(t["name"])
            if t["spec"] in cfg.per_residue:
                t["residue_column"] = residue_column(t["name"])
                t["residue_window"] = cfg.residue_window
        write_json(run.teachers, infos)
        return infos

    return wait


def run_precompute(cfg: PrecomputeConfig) -> Manifest:
    """Run (or resume) a precompute and return the finished dataset's :class:`Manifest`.

    Raises:
        SequenceError: bad input records under the ``error`` policies, or an unreadable input
            (truncated gzip, not FASTA) — before anything is embedded.
        ManifestMismatch: ``cfg.output`` holds finished shards of a run with other arguments.
        ValueError, FileNotFoundError: a bad setting or a missing input.
    """
    cfg.validate()
    run = RunDir(cfg.output)
    state = claim(run, fingerprint(cfg))
    drop_damaged(run, cfg)
    if (run.root / MANIFEST_FILE).is_file():
        log(cfg, f"{run.root} is already complete")
        return Manifest.load(run.root)
    faults = read_faults()
    init_ray(cfg.ray_address)
    with data_context(progress_bars=cfg.progress):  # the caller's settings restored after
        return _tracked(cfg, run, state, faults)


def _tracked(cfg: PrecomputeConfig, run: RunDir, state: dict, faults: dict) -> Manifest:
    if not cfg.track:
        return _run(cfg, run, state, faults, None)
    from ..tracking import setup_mlflow

    setup_mlflow(cfg.experiment)
    import mlflow

    with mlflow.start_run(run_name=f"precompute-{Path(cfg.output).name}") as mrun:
        mlflow.log_params({
            "teachers": ",".join(cfg.teachers)[:6000], "inputs": ",".join(cfg.inputs)[:6000],
            "output": os.path.abspath(cfg.output), "max_len": cfg.max_len,
            "length_rule": cfg.length_rule, "residue_window": cfg.residue_window,
            "store": store_uri(cfg, run),
            "validation_fraction": cfg.validation_fraction, "batch_tokens": cfg.batch_tokens,
            "actors_per_teacher": cfg.actors_per_teacher, "on_invalid": cfg.on_invalid,
            "on_duplicate": cfg.on_duplicate})
        return _run(cfg, run, state, faults, mrun)


def _run(cfg: PrecomputeConfig, run: RunDir, state: dict, faults: dict, mrun) -> Manifest:
    t0 = time.perf_counter()
    teachers_future = resolve_teachers(cfg, run)
    stage_summary = stage(StageSettings(
        inputs=list(cfg.inputs), max_len=cfg.max_len, length_rule=cfg.length_rule,
        on_invalid=cfg.on_invalid,
        on_duplicate=cfg.on_duplicate, num_shards=cfg.num_shards, shard_size=cfg.shard_size,
        range_mb=cfg.range_mb, validation_fraction=cfg.validation_fraction,
        progress=cfg.progress, label="precompute"), run, state)
    log(cfg, f"staged in {time.perf_counter() - t0:.1f} s")
    teachers = teachers_future()
    emb = embed_shards(cfg, run, teachers, stage_summary, faults)
    manifest = finalize(cfg, run, teachers, stage_summary, read_passes(run))
    wall = time.perf_counter() - t0
    # Figures of this invocation (in the returned object only; the saved manifest describes
    # the dataset, not how many attempts it took).
    manifest.extra["this_run"] = {
        **emb, "wall_seconds": round(wall, 3),
        "proteins_per_s": emb["rows_embedded"] / emb["seconds"] if emb["seconds"] else 0.0,
        "tokens_per_s": emb["residues_embedded"] / emb["seconds"] if emb["seconds"] else 0.0}
    log(cfg, f"done: {manifest.rows:,} rows, {manifest.extra['rejected']} rejected, "
             f"{emb['shards_written']} shard(s) written now in {wall:.1f} s -> {run.root}")
    if mrun is not None:
        _log_run(mrun, run, manifest, emb, stage_summary, wall)
    return manifest


def _log_run(mrun, run: RunDir, manifest: Manifest, emb: dict, stage_summary: dict,
             wall: float) -> None:
    """This invocation's figures and the dataset's manifest/rejects into its MLflow run."""
    import mlflow

    rate = emb["rows_embedded"] / emb["seconds"] if emb["seconds"] else 0.0
    metrics = {"records_read": stage_summary["records"], "rows": manifest.rows,
               "rejected": manifest.extra["rejected"],
               "num_shards": stage_summary["num_shards"],
               "shards_written": emb["shards_written"],
               "shards_done_before": emb["shards_done_before"], "proteins_per_s": rate,
               "tokens_per_s": emb["residues_embedded"] / emb["seconds"]
               if emb["seconds"] else 0.0, "wall_seconds": wall}
    # Per teacher: throughput of one actor while busy (proteins and residues it computed over
    # every invocation of the run, over its actors' summed busy time).
    passes = read_passes(run)
    for t in manifest.teachers:
        rec = passes.get(t.column, {})
        if rec.get("seconds", 0) > 0 and rec.get("computed"):
            metrics[f"{t.name}.proteins_per_s"] = rec["computed"] / rec["seconds"]
            metrics[f"{t.name}.tokens_per_s"] = rec.get("residues", 0) / rec["seconds"]
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(run.root / MANIFEST_FILE))
    mlflow.log_artifact(str(run.root / REJECTS_FILE))
    manifest.extra["mlflow_run_id"] = mrun.info.run_id
