"""Phases 2 and 3 of a precompute: one pass of the library's embedding pipeline per teacher
(:func:`mtdp.pipeline.embed_pass`: distinct sequences not yet in the store, on the teacher's
actor pool, committed batch by batch), then every unfinished shard assembled from its staged
rows and the store (:mod:`.shards`)."""
from __future__ import annotations

import json
import time

from ..io import remove_stale_temporaries, write_json
from ..pipeline import PassSettings, embed_pass
from .config import PrecomputeConfig
from .rundir import RunDir, log
from .shards import assemble_shards

#: Fault injections that belong to the assembly, not to the passes.
_ASSEMBLY_FAULTS = ("fail_after_shards",)


def store_uri(cfg: PrecomputeConfig, run: RunDir) -> str:
    """The store the teachers' vectors go to: ``--store``, else ``RUN/work/store``."""
    return cfg.store or str(run.store)


def embed_shards(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], stage: dict,
                 faults: dict) -> dict:
    """Phases 2 and 3 for every unfinished shard. Returns figures of this invocation."""
    pending = [int(s) for s in stage["shards"] if not run.finished(int(s))]
    skipped = len(stage["shards"]) - len(pending)
    stats = {"shards_done_before": skipped, "shards_written": 0, "rows_embedded": 0,
             "rows_reused": 0, "residues_embedded": 0, "seconds": 0.0,
             "steady_seconds": 0.0}
    if skipped:
        log(cfg, f"resuming: {skipped} of {len(stage['shards'])} shard(s) already finished")
    if not pending:
        return stats
    if run.data.is_dir():
        remove_stale_temporaries(run.data)  # a write killed between temp file and rename
    t0 = time.perf_counter()
    passes = _embed_teachers(cfg, run, teachers, stage, pending, faults, stats)
    _assemble(cfg, run, teachers, pending, passes, faults, stats)
    stats["seconds"] = time.perf_counter() - t0
    if stats["steady_seconds"]:
        stats["steady_proteins_per_s"] = stats["rows_embedded"] / stats["steady_seconds"]
    return stats


def read_passes(run: RunDir) -> dict[str, dict]:
    """Each teacher column's embedding record over every invocation of the run: proteins
    computed, actor seconds, and the rejects of its latest pass (hash → reason)."""
    return json.loads(run.passes.read_text()) if run.passes.is_file() else {}


def _embed_teachers(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], stage: dict,
                    pending: list[int], faults: dict, stats: dict) -> dict[str, dict]:
    staged = {str(run.stage_file(s)): stage["shards"][str(s)] for s in pending}
    valid = sum(staged.values())
    store = store_uri(cfg, run)
    passes = read_passes(run)
    pass_faults = {k: v for k, v in faults.items() if k not in _ASSEMBLY_FAULTS}
    log(cfg, f"embedding {valid:,} proteins of {len(pending)} shard(s) with "
             f"{len(teachers)} teacher(s), one after the other, into {store}")
    for t in teachers:
        settings = PassSettings(
            spec=t["spec"], too_long="truncate", max_len=cfg.max_len,
            batch_tokens=cfg.batch_tokens, actors=cfg.actors_per_teacher,
            cpus_per_actor=cfg.cpus_per_actor, gpus_per_actor=cfg.gpus_per_actor,
            commit_rows=cfg.commit_rows, retries=cfg.retries,
            per_residue=bool(t.get("residue_column")),
            residue_window=int(t.get("residue_window", 1)), progress=cfg.progress,
            label=f"precompute {t['name']}")
        done = embed_pass(staged, store, t["identity"], t["name"], settings, pass_faults)
        rec = passes.setdefault(t["column"], {"computed": 0, "residues": 0, "seconds": 0.0})
        rec["computed"] += done.computed
        rec["residues"] = rec.get("residues", 0) + done.residues
        rec["seconds"] += done.actor_seconds
        rec["rejects"] = done.rejects
        write_json(run.passes, passes)
        # Proteins (and residues) through the teachers: those any teacher had to embed.
        stats["rows_embedded"] = max(stats["rows_embedded"], done.computed)
        stats["rows_reused"] = max(stats["rows_reused"], done.reused)
        stats["residues_embedded"] = max(stats["residues_embedded"], done.residues)
        rate = done.steady_proteins_per_s
        stats["steady_seconds"] += done.computed / rate if rate else done.seconds
        log(cfg, f"{t['name']}: {done.computed:,} computed, {done.reused:,} from the store, "
                 f"{len(done.rejects):,} failed, in {done.seconds:.1f} s")
    return passes


def _assemble(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], pending: list[int],
              passes: dict[str, dict], faults: dict, stats: dict) -> None:
    import ray.data

    items = [{"shard": s, "path": str(run.stage_file(s))} for s in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(assemble_shards, batch_size=1, batch_format="pyarrow", num_cpus=0.25,
                        fn_kwargs=dict(run_root=str(run.root), store=store_uri(cfg, run),
                                       teachers=teachers,
                                       rejects={c: p.get("rejects", {})
                                                for c, p in passes.items()},
                                       fail_after=faults.get("fail_after_shards")))
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        stats["shards_written"] += batch.num_rows
