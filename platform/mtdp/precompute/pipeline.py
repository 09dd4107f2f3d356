"""Phase 2 of a precompute on Ray Data: every unfinished staged shard → one teacher actor pool
after the other → the shard writer (:mod:`.shards`)."""
from __future__ import annotations

import shutil
import sys
import time

from ..io import remove_stale_temporaries
from ..teacher_data import residue_column
from .actor import TeacherActor, load_stage
from .config import PrecomputeConfig
from .rundir import RunDir, log
from .shards import write_shards


def embed_shards(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], stage: dict,
                 faults: dict) -> dict:
    """Phases 2 and 3 for every unfinished shard. Returns throughput figures of this
    invocation."""
    pending = [int(s) for s in stage["shards"] if not run.finished(int(s))]
    skipped = len(stage["shards"]) - len(pending)
    stats = {"shards_done_before": skipped, "shards_written": 0, "rows_embedded": 0,
             "residues_embedded": 0, "seconds": 0.0}
    if skipped:
        log(cfg, f"resuming: {skipped} of {len(stage['shards'])} shard(s) already finished")
    if not pending:
        return stats
    for s in pending:  # leftovers of an interrupted attempt at an unfinished shard
        shutil.rmtree(run.parts / run.shard_name(s), ignore_errors=True)
    if run.data.is_dir():
        remove_stale_temporaries(run.data)  # a write killed between temp file and rename
    ds = _dataset(cfg, run, teachers, stage, faults, pending)
    from tqdm.auto import tqdm

    total = sum(stage["shards"][str(s)] for s in pending)
    bar = tqdm(total=total, unit="prot", desc="precompute", disable=not cfg.progress,
               mininterval=1.0)
    t0 = time.perf_counter()
    done = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for r in batch.to_pylist():
            stats["shards_written"] += 1
            stats["rows_embedded"] += r["rows"] + r["rejected"]
            stats["residues_embedded"] += r["residues"]
            done.append((r["finished_at"], r["rows"] + r["rejected"]))
            bar.update(r["rows"] + r["rejected"])
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    # Steady state: proteins of every shard after the first finished one, over the time from
    # the first to the last (excludes actor start-up and model loading).
    done.sort()
    if len(done) > 1 and done[-1][0] > done[0][0]:
        stats["steady_proteins_per_s"] = sum(n for _, n in done[1:]) / (done[-1][0] - done[0][0])
    return stats


def _dataset(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], stage: dict,
             faults: dict, pending: list[int]):
    """The Ray Data pipeline: staged shards → each teacher's actor pool → the writer."""
    import ray.data

    res = actor_resources(cfg, len(teachers))
    log(cfg, f"embedding {sum(stage['shards'][str(s)] for s in pending):,} proteins in "
             f"{len(pending)} shard(s) with {len(teachers)} teacher(s) x "
             f"{cfg.actors_per_teacher} actor(s) ({res['num_cpus']} CPU, {res['num_gpus']} "
             f"GPU, {res['threads']} thread(s) each)")
    items = [{"shard": s, "path": str(run.stage_file(s))} for s in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(load_stage, batch_size=1, batch_format="pyarrow", num_cpus=0.25)
    columns = []
    for t in teachers:
        columns.append(t["column"])
        rcol = residue_column(t["name"]) if t["spec"] in cfg.per_residue else ""
        if rcol:
            columns.append(rcol)
        ds = ds.map_batches(
            TeacherActor, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
            fn_constructor_kwargs=dict(spec=t["spec"], column=t["column"],
                                       batch_tokens=cfg.batch_tokens, threads=res["threads"],
                                       retries=cfg.retries, faults=faults,
                                       residue_column=rcol),
            compute=ray.data.ActorPoolStrategy(size=cfg.actors_per_teacher),
            num_cpus=res["num_cpus"], num_gpus=res["num_gpus"] or None)
    return ds.map_batches(write_shards, batch_size=None, batch_format="pyarrow", num_cpus=0.25,
                          fn_kwargs=dict(run_root=str(run.root), expected=stage["shards"],
                                         columns=columns,
                                         fail_after=faults.get("fail_after_shards")))


def actor_resources(cfg: PrecomputeConfig, n_teachers: int) -> dict:
    """Resources per teacher actor: a GPU each where there are GPUs, else shares of the CPUs
    that leave one free (an actor pool holding every CPU starves Ray Data's read tasks)."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    if gpus > 0 and cfg.gpus_per_actor > 0:
        need = cfg.gpus_per_actor * cfg.actors_per_teacher * n_teachers
        if need > gpus:
            print(f"[precompute] warning: {n_teachers} teacher(s) x {cfg.actors_per_teacher} "
                  f"actor(s) x {cfg.gpus_per_actor} GPU need {need:g} GPUs, the cluster has "
                  f"{gpus:g}: some actors wait for an autoscaler (lower --actors-per-teacher "
                  "or use --gpus-per-actor 0.5)", file=sys.stderr)
        num_cpus = cfg.cpus_per_actor or 1.0
        return {"num_cpus": num_cpus, "num_gpus": cfg.gpus_per_actor,
                "threads": max(1, int(num_cpus))}
    actors = cfg.actors_per_teacher * n_teachers
    num_cpus = cfg.cpus_per_actor or max(0.1, min(float(int(cpus)), (cpus - 1) / actors))
    return {"num_cpus": round(num_cpus, 3), "num_gpus": 0, "threads": max(1, int(num_cpus))}
