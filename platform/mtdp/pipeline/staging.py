"""Staging, the first step of every embedding pipeline (the embedding job and precompute):
parse every input in parallel pieces, prepare each record, find duplicate ids across all
inputs, and stage each shard's rows (Ray Data).

Inputs are cut into pieces (:mod:`mtdp.inputs`) that tasks parse in parallel; every record goes
through :func:`mtdp.sequences.prepare` (the student's code path), gets its split
(:func:`mtdp.teacher_data.split_of`) and a shard from a stable hash of its id. A
``groupby(shard)`` brings every copy of an id together, so duplicates are found globally; each
shard's prepared rows are written to ``WORKDIR/work/stage/``. Invalid records and duplicate ids
are errors by default (all of them listed), or rejects (``on_invalid="skip"``,
``on_duplicate="keep-first"``).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..inputs import (InputRange, count_records, input_kind, materialize_input, plan_inputs,
                      read_range)
from ..io import write_json
from ..runtime import ray_get
from ..sequences import SequenceError, crop, prepare
from ..teacher_data import split_of, write_shard
from .context import data_context, shuffle_maps, shuffle_partitions
from .workdir import WorkDir, log, write_rejects_tsv


PROBLEMS_FILE = "input-problems.tsv"


@dataclass
class StageSettings:
    """What staging needs. Precompute truncates to its ``max_len`` here (the sequences the
    student will see); the embedding job passes ``max_len=None``: sequences stay whole and
    the model's length policy applies in the actors. ``label`` prefixes progress lines."""

    inputs: list[str]
    max_len: int | None
    #: ``truncate`` or ``crop`` (:func:`mtdp.sequences.crop`) proteins past ``max_len``.
    length_rule: str = "truncate"
    on_invalid: str = "error"
    on_duplicate: str = "error"
    num_shards: int | None = None
    shard_size: int = 4096
    range_mb: float = 16.0
    validation_fraction: float = 0.0
    progress: bool = True
    label: str = "stage"


def shard_of(seq_id: str, num_shards: int) -> int:
    """Shard of a protein: stable hash of its id (salted, so independent of the split)."""
    h = hashlib.sha1(b"mtdp-shard:" + seq_id.encode()).digest()
    return int.from_bytes(h[:8], "big") % num_shards


_STAGE_COLUMNS = ("id", "sequence", "length", "split", "shard", "file_index", "record",
                  "source", "kind", "reason")


def _parse_ranges(batch, *, max_len: int, num_shards: int, validation_fraction: float,
                  length_rule: str = "truncate"):
    """Ray Data UDF: parse input pieces into prepared rows (``kind`` ok/invalid/fatal)."""
    import pyarrow as pa


    cols: dict[str, list] = {c: [] for c in _STAGE_COLUMNS}

    def add(rid, seq, shard, fidx, rec, src, kind, reason):
        for c, v in zip(_STAGE_COLUMNS, (rid, seq, len(seq), split_of(rid, validation_fraction),
                                         shard, fidx, rec, src, kind, reason)):
            cols[c].append(v)

    for r in batch.to_pylist():
        rng = InputRange(**r)
        try:
            for rec in read_range(rng):
                try:
                    if not rec.id:
                        raise SequenceError("missing id", source=rec.source, record=rec.index)
                    seq = prepare(rec.sequence, max_len=None if length_rule == "crop"
                                  else max_len, seq_id=rec.id, source=rec.source,
                                  record=rec.index)
                    if length_rule == "crop" and max_len is not None:
                        seq = crop(seq, max_len, rec.id)
                except SequenceError as err:
                    add(rec.id, "", shard_of(rec.id, num_shards), rng.file_index, rec.index,
                        rec.source, "invalid", str(err))
                    continue
                add(rec.id, seq, shard_of(rec.id, num_shards), rng.file_index, rec.index,
                    rec.source, "ok", "")
        except SequenceError as err:  # structural: the file cannot be read on
            add("", "", 0, rng.file_index, err.record or 0, rng.source, "fatal", str(err))
    return pa.table({c: cols[c] for c in _STAGE_COLUMNS}).cast(_stage_schema())


def _stage_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("sequence", pa.string()), ("length", pa.int32()),
                      ("split", pa.string()), ("shard", pa.int32()), ("file_index", pa.int32()),
                      ("record", pa.int64()), ("source", pa.string()), ("kind", pa.string()),
                      ("reason", pa.string())])


def _stage_shard(table, *, stage_dir: str):
    """Ray Data ``map_groups`` UDF: all rows of one shard → deduplicated staged Parquet file.

    Returns the shard's problems (invalid, fatal, duplicate rows) plus one ``staged`` row whose
    ``record`` is the shard's row count.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    shard = int(table["shard"][0].as_py())
    ok = table.filter(pc.equal(table["kind"], "ok"))
    bad = table.filter(pc.not_equal(table["kind"], "ok"))
    # Input order (file, record) decides which copy of an id is "first".
    ok = ok.sort_by([("file_index", "ascending"), ("record", "ascending")])
    ids, sources, records = (ok[c].to_pylist() for c in ("id", "source", "record"))
    first: dict[str, int] = {}
    keep: list[bool] = []
    dup_rows: list[int] = []
    dup_reasons: list[str] = []
    for i, rid in enumerate(ids):
        if rid in first:
            j = first[rid]
            keep.append(False)
            dup_rows.append(i)
            dup_reasons.append(f"file {sources[i]}, record {records[i]}, id {rid!r}: duplicate "
                               f"id (first seen in file {sources[j]}, record {records[j]})")
        else:
            first[rid] = i
            keep.append(True)
    kept = ok.filter(pa.array(keep, pa.bool_())) if dup_rows else ok
    problems = [bad]
    if dup_rows:
        dups = ok.take(pa.array(dup_rows)).drop_columns(["kind", "reason"])
        dups = dups.append_column("kind", pa.array(["duplicate"] * len(dup_rows))) \
                   .append_column("reason", pa.array(dup_reasons))
        problems.append(dups.select(list(_STAGE_COLUMNS)).cast(_stage_schema()))
    if kept.num_rows:
        write_shard(kept.select(["id", "sequence", "length", "split", "shard", "source",
                                    "record"]),
                       Path(stage_dir) / f"shard-{shard:05d}.parquet")
    summary = dict(id=[""], sequence=[""], length=[0], split=[""], shard=[shard],
                   file_index=[0], record=[kept.num_rows], source=[""], kind=["staged"],
                   reason=[""])
    problems.append(pa.table(summary).cast(_stage_schema()))
    # Sequences stay on disk: only ids and reasons travel back to the driver.
    return pa.concat_tables(problems).drop_columns(["sequence"])


def stage(cfg: StageSettings, run: WorkDir, state: dict) -> dict:
    """Phase 1 (see module doc). Returns the stage summary (also saved in the run dir).

    Raises:
        SequenceError: unreadable inputs, or invalid records / duplicate ids under the
            ``error`` policies — every one listed in ``RUN/input-problems.tsv``.
    """
    if run.stage_done.is_file():
        return json.loads(run.stage_done.read_text())
    shutil.rmtree(run.stage, ignore_errors=True)
    (run.root / PROBLEMS_FILE).unlink(missing_ok=True)  # regenerated below if needed
    t0 = time.perf_counter()
    ranges, total = _plan(cfg, run)
    num_shards = state.get("num_shards") or cfg.num_shards or max(1, math.ceil(
        total / cfg.shard_size))
    state["num_shards"] = num_shards
    write_json(run.state, state)
    log(cfg.label, cfg.progress, f"staging {total:,} records from {len(cfg.inputs)} file(s) "
        f"in {len(ranges)} piece(s) into {num_shards} shard(s)")
    rows = _stage_rows(cfg, run, ranges, num_shards)
    shards = {int(r["shard"]): int(r["record"]) for r in rows
              if r["kind"] == "staged" and r["record"]}
    problems = sorted((r for r in rows if r["kind"] != "staged"),
                      key=lambda r: (r["file_index"], r["record"]))
    rejects = [{"id": r["id"], "source": r["source"], "record": r["record"], "stage": r["kind"],
                "reason": r["reason"]} for r in problems]
    _refuse_bad_input(cfg, run, problems, rejects)
    summary = {"num_shards": num_shards, "shards": {str(k): v for k, v in sorted(shards.items())},
               "records": total, "valid": sum(shards.values()),
               "invalid": sum(r["kind"] == "invalid" for r in problems),
               "duplicates": sum(r["kind"] == "duplicate" for r in problems), "rejects": rejects,
               "seconds": round(time.perf_counter() - t0, 3)}
    write_json(run.stage_done, summary)
    shutil.rmtree(run.inputs, ignore_errors=True)  # decompressed copies are no longer needed
    return summary


def _plan(cfg: StageSettings, run: WorkDir) -> tuple[list[InputRange], int]:
    """Input pieces with their first record number and record count, and the total."""
    import ray

    # .gz inputs are decompressed (streaming) in Ray tasks, in parallel; others used in place.
    gunzip = ray.remote(num_cpus=1)(materialize_input)
    files = [gunzip.remote(p, i, str(run.inputs)) if input_kind(p) == "fasta.gz"
             else materialize_input(p, i, str(run.inputs)) for i, p in enumerate(cfg.inputs)]
    files = [ray_get(f) if isinstance(f, ray.ObjectRef) else f for f in files]
    ranges = plan_inputs(files, range_bytes=max(1 << 16, int(cfg.range_mb * (1 << 20))))
    counter = ray.remote(num_cpus=1)(count_records)
    counts = ray_get([counter.remote(r) for r in ranges])
    per_file: dict[int, int] = {}
    for r, n in zip(ranges, counts):
        r.first_record = per_file.get(r.file_index, 0) + 1
        r.records = n
        per_file[r.file_index] = per_file.get(r.file_index, 0) + n
    total = sum(counts)
    if total == 0:
        raise SequenceError("no records found in the inputs", source=", ".join(cfg.inputs))
    return ranges, total


def _stage_rows(cfg: StageSettings, run: WorkDir, ranges: list[InputRange],
                num_shards: int) -> list[dict]:
    """Run the staging dataset; returns its problem rows and one ``staged`` row per shard."""
    import pyarrow as pa
    import ray.data

    run.stage.mkdir(parents=True, exist_ok=True)
    items = [r.to_dict() for r in ranges]
    with data_context():  # set before the dataset is built: it keeps a copy of the context
        # One block per input piece up to a cap (a task then parses several): the shuffle's
        # objects are map tasks × partitions (mtdp.pipeline.context).
        ds = ray.data.from_items(items, override_num_blocks=shuffle_maps(len(items)))
        ds = ds.map_batches(_parse_ranges, batch_size=1, batch_format="pyarrow",
                            fn_kwargs=dict(max_len=cfg.max_len, num_shards=num_shards,
                                           validation_fraction=cfg.validation_fraction,
                                           length_rule=cfg.length_rule))
        rows = sum(r.records for r in ranges)
        ds = ds.groupby("shard", num_partitions=shuffle_partitions(num_shards, rows)).map_groups(
            _stage_shard, batch_format="pyarrow", fn_kwargs=dict(stage_dir=str(run.stage)))
        tables = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
                  for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    return pa.concat_tables(tables).to_pylist() if tables else []


def _refuse_bad_input(cfg: StageSettings, run: WorkDir, problems: list[dict],
                      rejects: list[dict]) -> None:
    """Stop before anything is embedded when the policies make a problem an error."""
    fatal = [r for r in problems if r["kind"] == "fatal"]
    invalid = [r for r in problems if r["kind"] == "invalid"]
    dups = [r for r in problems if r["kind"] == "duplicate"]
    errors = fatal + (invalid if cfg.on_invalid == "error" else []) \
        + (dups if cfg.on_duplicate == "error" else [])
    if not errors:
        return
    listing = run.root / PROBLEMS_FILE
    write_rejects_tsv(listing, rejects)
    hint = []
    if invalid and cfg.on_invalid == "error":
        hint.append("--on-invalid skip")
    if dups and cfg.on_duplicate == "error":
        hint.append("--on-duplicate keep-first")
    raise SequenceError(
        f"{len(errors)} bad input record(s) ({len(fatal)} unreadable, {len(invalid)} "
        f"invalid, {len(dups)} duplicate ids); first: {errors[0]['reason']}. All are listed "
        f"in {listing}. Nothing was embedded; fix the input"
        + (f" or pass {' / '.join(hint)}" if hint else ""))
