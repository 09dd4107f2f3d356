"""Teacher precompute on Ray Data: proteins → one Parquet dataset of teacher embeddings.

The output is exactly the contract of :mod:`mtdp.teacher_data` (``RUN/data/*.parquet`` plus
``RUN/manifest.json`` written last). The run has three phases, each restartable:

1. **Stage** (Ray Data): inputs are cut into pieces (:mod:`mtdp.data`) that tasks parse in
   parallel; every record goes through :func:`mtdp.sequences.prepare` (the student's code path),
   gets its split (:func:`mtdp.teacher_data.split_of`) and a shard from a stable hash of its id.
   A ``groupby(shard)`` brings every copy of an id together, so duplicates are found globally;
   each shard's prepared rows are written to ``RUN/work/stage/``. Invalid records and duplicate
   ids are errors by default (all of them listed), or rejects (``on_invalid="skip"``,
   ``on_duplicate="keep-first"``).
2. **Embed** (Ray Data): for every shard not yet finished, one ``map_batches`` per teacher on an
   actor pool (one model load per actor; ``num_gpus`` per actor on GPU clusters, a fraction of a
   CPU otherwise so read/write tasks still get scheduled). A shard arrives as one batch and
   :func:`mtdp.embed.embed_sequences` sorts it by length into token-budget batches. A failing
   batch is retried by halving down to single proteins; a protein that still fails (or gives a
   non-finite fp16 vector) becomes a reject with its reason. Dead actors are restarted and their
   work retried by Ray (``max_restarts``/``max_task_retries``).
3. **Write**: a shard is written once all its teachers are done — a done-marker with its stats,
   then the Parquet file via temp file + rename. A finished shard is never rewritten; a rerun
   with the same arguments skips finished shards. When every shard is finished, the rejects
   file and the manifest (per-feature train mean/std merged from the shard markers) are written.

Everything is tracked in one MLflow run per invocation.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .sequences import DEFAULT_MAX_LEN, SequenceError, prepare
from .teacher_data import (DATA_DIR, DEFAULT_VALIDATION_FRACTION, MANIFEST_FILE, Manifest,
                           ManifestMismatch, TeacherEntry, data_files, split_of, residue_column,
                           teacher_column)

#: Environment variable with a JSON object of fault injections, for tests and drills only:
#: ``fail_after_shards`` (N: the writer raises once N shards are finished), ``crash_actor_once``
#: (a marker path: the first teacher call kills its actor process), ``unembeddable_ids`` (ids
#: whose embedding raises).
FAULTS_ENV = "MTDP_PRECOMPUTE_FAULTS"
WORK_DIR = "work"
REJECTS_FILE = "rejects.tsv"
_STATE_VERSION = 1


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class PrecomputeConfig:
    """Everything that defines a precompute run (CLI flags / YAML keys of the same names)."""

    inputs: list[str] = field(metadata=_help(
        "input files: FASTA (plain or .gz) or Parquet with columns id, sequence; a list "
        "'[a.fasta, b.parquet]' or comma-separated"))
    teachers: list[str] = field(metadata=_help(
        "teachers: registry names (see `mtdp teachers`, e.g. esm2_t33_650M_UR50D, "
        "prot_t5_xl_uniref50, tiny-random-esm2) or checkpoint paths (ESM-2 .pt, ProtT5 dir)"))
    output: str = field(metadata=_help(
        "run directory to create or resume (data/*.parquet + manifest.json)"))
    per_residue: list[str] = field(default_factory=list, metadata=_help(
        "teachers (as named in --teachers) whose per-residue states are written too, column "
        "r_<name>, for per-residue distillation (distill --residue-teachers); costs "
        "residues x dim x 2 bytes each"))
    max_len: int = field(default=DEFAULT_MAX_LEN, metadata=_help(
        "truncate proteins to this many residues (as the student will see them)"))
    validation_fraction: float = field(default=DEFAULT_VALIDATION_FRACTION, metadata=_help(
        "fraction of proteins in the validation split (stable hash of the id)"))
    batch_tokens: int | None = field(default=None, metadata=_help(
        "padded tokens per teacher forward pass (default 8192 on CPU, 65536 on GPU)"))
    actors_per_teacher: int = field(default=1, metadata=_help(
        "model replicas (Ray actors) per teacher"))
    num_shards: int | None = field(default=None, metadata=_help(
        "number of output shards (default: records / shard_size; fixed at the first run)"))
    shard_size: int = field(default=4096, metadata=_help(
        "target proteins per shard when num_shards is not given (the unit of resume)"))
    on_invalid: str = field(default="error", metadata=_help(
        "invalid records (bad letters, empty): 'error' stops before embedding and lists them "
        "all; 'skip' writes them to rejects.tsv"))
    on_duplicate: str = field(default="error", metadata=_help(
        "repeated ids: 'error' stops and lists them; 'keep-first' keeps the first in input "
        "order and writes the others to rejects.tsv"))
    retries: int = field(default=2, metadata=_help(
        "extra attempts for a single protein whose embedding fails, before it is rejected"))
    cpus_per_actor: float | None = field(default=None, metadata=_help(
        "CPUs reserved per teacher actor (default: GPU clusters 1, else the free CPUs split "
        "across actors, leaving one for reading/writing)"))
    gpus_per_actor: float = field(default=1.0, metadata=_help(
        "GPUs per teacher actor when the cluster has GPUs (fractions share a GPU)"))
    range_mb: float = field(default=16.0, metadata=_help(
        "size of one FASTA read piece in MB (parallelism of parsing)"))
    ray_address: str | None = field(default=None, metadata=_help(
        "Ray cluster to use (default: $RAY_ADDRESS, as set by `ray job submit`, else a new "
        "local Ray)"))
    experiment: str = field(default="mtdp-precompute", metadata=_help(
        "MLflow experiment name"))
    track: bool = field(default=True, metadata=_help("log the run to MLflow"))
    progress: bool = field(default=True, metadata=_help("show progress bars and messages"))

    def __post_init__(self) -> None:
        # Lists may arrive as comma-separated strings from the command line.
        for name in ("inputs", "teachers", "per_residue"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            setattr(self, name, [str(v) for v in (value or [])])

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if not self.inputs:
            raise ValueError("no inputs given (--inputs FILE[,FILE...])")
        if not self.teachers:
            raise ValueError("no teachers given (--teachers NAME[,NAME...])")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"teachers listed twice: {self.teachers}")
        from .teachers import REGISTRY

        for spec in self.teachers:
            if spec not in REGISTRY and not os.path.exists(spec):
                raise ValueError(f"unknown teacher {spec!r}: use a name from `mtdp teachers` "
                                 f"({', '.join(sorted(REGISTRY))}) or a checkpoint path")
        extra = [t for t in self.per_residue if t not in self.teachers]
        if extra:
            raise ValueError(f"per_residue names {extra}, which are not among the teachers "
                             f"{self.teachers}")
        if not self.output:
            raise ValueError("no output directory given (--output DIR)")
        for path in self.inputs:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"input {path}: no such file")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, not {self.max_len}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), not "
                             f"{self.validation_fraction}")
        if self.on_invalid not in ("error", "skip"):
            raise ValueError(f"on_invalid must be 'error' or 'skip', not {self.on_invalid!r}")
        if self.on_duplicate not in ("error", "keep-first"):
            raise ValueError(f"on_duplicate must be 'error' or 'keep-first', not "
                             f"{self.on_duplicate!r}")
        if self.actors_per_teacher < 1:
            raise ValueError("actors_per_teacher must be >= 1")
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")


# ---- run directory layout -------------------------------------------------------------------
class RunDir:
    """Paths of one run directory and its private ``work/`` state."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.data = self.root / DATA_DIR
        self.work = self.root / WORK_DIR
        self.state = self.work / "run.json"
        self.teachers = self.work / "teachers.json"
        self.stage = self.work / "stage"
        self.stage_done = self.stage / "_SUCCESS.json"
        self.done = self.work / "done"
        self.parts = self.work / "parts"
        self.inputs = self.work / "input"

    def shard_name(self, shard: int) -> str:
        return f"shard-{shard:05d}"

    def stage_file(self, shard: int) -> Path:
        return self.stage / f"{self.shard_name(shard)}.parquet"

    def data_file(self, shard: int) -> Path:
        return self.data / f"{self.shard_name(shard)}.parquet"

    def marker(self, shard: int) -> Path:
        return self.done / f"{self.shard_name(shard)}.json"

    def finished(self, shard: int) -> bool:
        """A shard is finished once its data file exists (its marker is written before)."""
        return self.data_file(shard).is_file()


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _write_parquet(table, path: Path) -> None:
    """Write a Parquet file atomically (temp name that no ``*.parquet`` glob sees, then rename)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def shard_of(seq_id: str, num_shards: int) -> int:
    """Shard of a protein: stable hash of its id (salted, so independent of the split)."""
    h = hashlib.sha1(b"mtdp-shard:" + seq_id.encode()).digest()
    return int.from_bytes(h[:8], "big") % num_shards


def _fingerprint(cfg: PrecomputeConfig) -> dict:
    """What must not change between a run and its resumption."""
    inputs = []
    for p in cfg.inputs:
        st = os.stat(p)
        inputs.append({"path": os.path.abspath(p), "size": st.st_size,
                       "mtime_ns": st.st_mtime_ns})
    return {"version": _STATE_VERSION, "inputs": inputs, "teachers": list(cfg.teachers),
            "max_len": cfg.max_len, "validation_fraction": cfg.validation_fraction,
            "on_invalid": cfg.on_invalid, "on_duplicate": cfg.on_duplicate,
            "num_shards": cfg.num_shards,
            # Only when used, so runs started before the option existed still resume.
            **({"per_residue": sorted(cfg.per_residue)} if cfg.per_residue else {})}


def _claim(run: RunDir, fp: dict) -> dict:
    """Create the run state, or check that a resumed run has the same arguments.

    A differing run is refused if it already finished shards (nothing written is ever lost);
    with nothing finished it is simply restarted.
    """
    if run.state.is_file():
        old = json.loads(run.state.read_text())
        mine = {k: v for k, v in fp.items() if k != "num_shards"}
        theirs = {k: v for k, v in old["fingerprint"].items() if k != "num_shards"}
        if fp["num_shards"] is not None and fp["num_shards"] != old.get("num_shards"):
            mine["num_shards"], theirs["num_shards"] = fp["num_shards"], old.get("num_shards")
        if mine == theirs:
            return old
        finished = data_files(run.root)
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if finished or (run.root / MANIFEST_FILE).exists():
            raise ManifestMismatch(
                f"{run.root} holds a run with different arguments ({', '.join(diff)} differ; an "
                f"input file changed size or modification time?) and {len(finished)} finished "
                "shard(s); they are kept. Rerun with the original arguments to resume, or use a "
                "new --output")
        shutil.rmtree(run.work, ignore_errors=True)  # nothing finished: start over cleanly
    elif run.root.exists() and any(run.root.iterdir()):
        raise ValueError(f"{run.root} exists, is not empty and is not an mtdp precompute run "
                         "directory; choose a new --output")
    state = {"fingerprint": fp, "num_shards": fp["num_shards"], "created": time.time()}
    _write_json(run.state, state)
    return state


def _faults() -> dict:
    text = os.environ.get(FAULTS_ENV)
    return json.loads(text) if text else {}


def _log(cfg: PrecomputeConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[precompute] {msg}", file=sys.stderr, flush=True)


# ---- Ray ------------------------------------------------------------------------------------
def _ensure_ray(cfg: PrecomputeConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # A private local cluster ("local" never attaches to someone else's `ray start`).
        ray.init(address="local", include_dashboard=False)


def _describe_teacher(spec: str) -> dict:
    """Load a teacher (in a Ray task, not on the driver) and return its provenance."""
    from .teachers import load_teacher

    info = load_teacher(spec).describe()
    info["spec"] = spec
    return info


def _resolve_teachers(cfg: PrecomputeConfig, run: RunDir):
    """Teacher provenance (``describe()`` + column) for every spec; returns a callable that
    waits for the result, so the model loads in Ray tasks overlap with staging."""
    import ray

    from .embedder import sha256_file

    if run.teachers.is_file():
        cached = json.loads(run.teachers.read_text())
        if [t["spec"] for t in cached] == cfg.teachers:
            for t in cached:  # a checkpoint replaced under the same path must not be mixed in
                if t.get("sha256") and os.path.isfile(t["source"]) \
                        and sha256_file(t["source"]) != t["sha256"]:
                    raise ManifestMismatch(f"teacher checkpoint {t['source']} changed since this "
                                           "run started (sha256 differs); use a new --output")
            return lambda: cached
    task = ray.remote(num_cpus=0.5)(_describe_teacher)
    futures = [task.remote(s) for s in cfg.teachers]

    def wait() -> list[dict]:
        infos = _ray_get(futures)
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
        _write_json(run.teachers, infos)
        return infos

    return wait


def _ray_get(refs):
    """``ray.get`` that re-raises a task's own exception (e.g. SequenceError) unwrapped."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


# ---- phase 1: stage -------------------------------------------------------------------------
_STAGE_COLUMNS = ("id", "sequence", "length", "split", "shard", "file_index", "record",
                  "source", "kind", "reason")


def _parse_ranges(batch, *, max_len: int, num_shards: int, validation_fraction: float):
    """Ray Data UDF: parse input pieces into prepared rows (``kind`` ok/invalid/fatal)."""
    import pyarrow as pa

    from .data import InputRange, read_range

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
                    seq = prepare(rec.sequence, max_len=max_len, seq_id=rec.id,
                                  source=rec.source, record=rec.index)
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
        _write_parquet(kept.select(["id", "sequence", "length", "split", "shard", "source",
                                    "record"]),
                       Path(stage_dir) / f"shard-{shard:05d}.parquet")
    summary = dict(id=[""], sequence=[""], length=[0], split=[""], shard=[shard],
                   file_index=[0], record=[kept.num_rows], source=[""], kind=["staged"],
                   reason=[""])
    problems.append(pa.table(summary).cast(_stage_schema()))
    # Sequences stay on disk: only ids and reasons travel back to the driver.
    return pa.concat_tables(problems).drop_columns(["sequence"])


def _stage(cfg: PrecomputeConfig, run: RunDir, state: dict) -> dict:
    """Phase 1 (see module doc). Returns the stage summary (also saved in the run dir)."""
    if run.stage_done.is_file():
        return json.loads(run.stage_done.read_text())
    import ray

    from .data import count_records, input_kind, materialize_input, plan_inputs

    shutil.rmtree(run.stage, ignore_errors=True)
    (run.root / "input-problems.tsv").unlink(missing_ok=True)  # regenerated below if needed
    t0 = time.perf_counter()
    # .gz inputs are decompressed (streaming) in Ray tasks, in parallel; others used in place.
    gunzip = ray.remote(num_cpus=1)(materialize_input)
    files = [gunzip.remote(p, i, str(run.inputs)) if input_kind(p) == "fasta.gz"
             else materialize_input(p, i, str(run.inputs)) for i, p in enumerate(cfg.inputs)]
    files = [_ray_get(f) if isinstance(f, ray.ObjectRef) else f for f in files]
    ranges = plan_inputs(files, range_bytes=max(1 << 16, int(cfg.range_mb * (1 << 20))))
    counter = ray.remote(num_cpus=1)(count_records)
    counts = _ray_get([counter.remote(r) for r in ranges])
    per_file: dict[int, int] = {}
    for r, n in zip(ranges, counts):
        r.first_record = per_file.get(r.file_index, 0) + 1
        r.records = n
        per_file[r.file_index] = per_file.get(r.file_index, 0) + n
    total = sum(counts)
    if total == 0:
        raise SequenceError("no records found in the inputs", source=", ".join(cfg.inputs))
    num_shards = state.get("num_shards") or cfg.num_shards or max(1, math.ceil(
        total / cfg.shard_size))
    state["num_shards"] = num_shards
    _write_json(run.state, state)
    _log(cfg, f"staging {total:,} records from {len(files)} file(s) in {len(ranges)} piece(s) "
              f"into {num_shards} shard(s)")

    import ray.data

    run.stage.mkdir(parents=True, exist_ok=True)
    items = [r.to_dict() for r in ranges]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_parse_ranges, batch_size=1, batch_format="pyarrow",
                        fn_kwargs=dict(max_len=cfg.max_len, num_shards=num_shards,
                                       validation_fraction=cfg.validation_fraction))
    ds = ds.groupby("shard", num_partitions=min(num_shards, 64)).map_groups(
        _stage_shard, batch_format="pyarrow",
        fn_kwargs=dict(stage_dir=str(run.stage)))
    import pyarrow as pa

    tables = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
              for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    result = pa.concat_tables(tables) if tables else None
    rows = result.to_pylist() if result is not None else []
    shards = {int(r["shard"]): int(r["record"]) for r in rows
              if r["kind"] == "staged" and r["record"]}
    problems = sorted((r for r in rows if r["kind"] != "staged"),
                      key=lambda r: (r["file_index"], r["record"]))
    fatal = [r for r in problems if r["kind"] == "fatal"]
    invalid = [r for r in problems if r["kind"] == "invalid"]
    dups = [r for r in problems if r["kind"] == "duplicate"]
    rejects = [{"id": r["id"], "source": r["source"], "record": r["record"], "stage": r["kind"],
                "reason": r["reason"]} for r in problems]
    errors = fatal + (invalid if cfg.on_invalid == "error" else []) \
        + (dups if cfg.on_duplicate == "error" else [])
    if errors:
        listing = run.root / "input-problems.tsv"
        _write_tsv(listing, rejects)
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
    summary = {"num_shards": num_shards, "shards": {str(k): v for k, v in sorted(shards.items())},
               "records": total, "valid": sum(shards.values()), "invalid": len(invalid),
               "duplicates": len(dups), "rejects": rejects,
               "seconds": round(time.perf_counter() - t0, 3)}
    _write_json(run.stage_done, summary)
    shutil.rmtree(run.inputs, ignore_errors=True)  # decompressed copies are no longer needed
    return summary


def _write_tsv(path: Path, rejects: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write("id\tsource\trecord\tstage\treason\n")
        for r in rejects:
            reason = str(r["reason"]).replace("\t", " ").replace("\n", " ")
            fh.write(f"{r['id']}\t{r['source']}\t{r['record']}\t{r['stage']}\t{reason}\n")
    os.replace(tmp, path)


# ---- phase 2: embed -------------------------------------------------------------------------
def _load_stage(batch):
    """Ray Data UDF: one ``{shard, path}`` item → the staged shard as one table (one batch)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in batch["path"].to_pylist()]
    table = pa.concat_tables(tables)
    return table.append_column("_reject", pa.array([None] * table.num_rows, pa.string()))


class TeacherActor:
    """Ray Data actor UDF: adds one teacher's fp16 embedding column to a batch of proteins.

    The model is loaded once per actor. Each call embeds the batch with
    :func:`mtdp.embed.embed_sequences` (length-sorted token-budget batches). Rows already
    rejected by an earlier teacher are skipped.
    """

    def __init__(self, spec: str, column: str, batch_tokens: int | None, threads: int,
                 retries: int, faults: dict, residue_column: str = "") -> None:
        import torch

        from .embedder import best_device
        from .teachers import load_teacher

        device = best_device()
        if device.type == "cpu":
            torch.set_num_threads(max(1, threads))  # stay within the actor's CPU reservation
        self.embedder = load_teacher(spec).to(device)
        self.column, self.batch_tokens, self.retries = column, batch_tokens, retries
        self.residue_column = residue_column
        self.faults = faults
        self.unembeddable = set(faults.get("unembeddable_ids") or [])

    def _embed(self, ids: list[str], seqs: list[str]) -> np.ndarray:
        from .embed import embed_sequences

        bad = self.unembeddable.intersection(ids)
        if bad:
            raise RuntimeError(f"injected embedding failure for {sorted(bad)[0]}")
        if not self.residue_column:
            return embed_sequences(self.embedder, seqs, batch_tokens=self.batch_tokens), None
        return embed_sequences(self.embedder, seqs, batch_tokens=self.batch_tokens,
                               per_residue=True)

    def _robust(self, ids: list[str], seqs: list[str], out: np.ndarray, residues: dict,
                reasons: list, rows: list[int]) -> None:
        """Embed ``rows`` into ``out`` (and their per-residue states into ``residues`` when this
        actor keeps them); on failure split in halves, retry singles, reject what still fails."""
        attempts = 1 + (self.retries if len(rows) == 1 else 0)
        for _ in range(attempts):
            try:
                emb, res = self._embed([ids[i] for i in rows], [seqs[i] for i in rows])
                out[rows] = emb
                if res is not None:
                    residues.update(zip(rows, res))
                return
            except Exception as exc:  # noqa: BLE001 - any model error: isolate, never drop
                error = exc
                self._free_memory()
        if len(rows) > 1:
            mid = len(rows) // 2
            self._robust(ids, seqs, out, residues, reasons, rows[:mid])
            self._robust(ids, seqs, out, residues, reasons, rows[mid:])
        else:
            reasons[rows[0]] = (f"{self.embedder.name}: {type(error).__name__}: {error}"
                                f" (after {attempts} attempt(s))")

    def _free_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __call__(self, batch):
        import pyarrow as pa

        marker = self.faults.get("crash_actor_once")
        if marker and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)  # simulate a dying worker (OOM kill, node loss): Ray must retry
        t0 = time.perf_counter()
        ids = batch["id"].to_pylist()
        seqs = batch["sequence"].to_pylist()
        reasons = batch["_reject"].to_pylist()
        dim = self.embedder.dim
        out = np.zeros((len(seqs), dim), dtype=np.float32)
        todo = [i for i, r in enumerate(reasons) if r is None]
        residues: dict[int, np.ndarray] = {}
        if todo:
            self._robust(ids, seqs, out, residues, reasons, todo)
            failed = [i for i in todo if reasons[i] is not None]
            if len(todo) >= 8 and len(failed) == len(todo):
                # Every protein failing is a broken teacher/device, not bad records: stop (a
                # rerun resumes) instead of rejecting the whole input.
                raise RuntimeError(f"teacher {self.embedder.name} failed on all {len(todo)} "
                                   f"proteins of a shard; first error: {reasons[failed[0]]}")
        half = out.astype(np.float16)
        finite = np.isfinite(half).all(axis=1)
        res16 = {i: r.astype(np.float16) for i, r in residues.items()}
        for i in todo:
            if reasons[i] is None and not finite[i]:
                reasons[i] = (f"{self.embedder.name}: non-finite embedding in float16 "
                              f"(max |x| {np.abs(out[i]).max():.3g})")
            elif reasons[i] is None and i in res16 and not np.isfinite(res16[i]).all():
                reasons[i] = f"{self.embedder.name}: non-finite per-residue state in float16"
        seconds = time.perf_counter() - t0
        column = pa.FixedSizeListArray.from_arrays(pa.array(half.reshape(-1), pa.float16()), dim)
        batch = batch.set_column(batch.schema.get_field_index("_reject"), "_reject",
                                 pa.array(reasons, pa.string()))
        batch = batch.append_column(self.column, column)
        if self.residue_column:
            batch = batch.append_column(self.residue_column, _residue_array(
                [res16.get(i) if reasons[i] is None else None for i in range(len(seqs))], dim))
        # Busy time spread over the rows, summed by the writer for per-teacher throughput.
        per_row = seconds / max(1, len(seqs))
        return batch.append_column(f"_sec{self.column}", pa.array([per_row] * len(seqs),
                                                                   pa.float64()))


def _residue_array(states: list[np.ndarray | None], dim: int):
    """``list<fixed_size_list<float16>[dim]>`` array of float16 ``[L_i, dim]`` states, one entry
    per row (null for rejected rows)."""
    import pyarrow as pa

    lengths = [0 if s is None else len(s) for s in states]
    flat = np.concatenate([s for s in states if s is not None] or [np.zeros((0, dim))])
    inner = pa.FixedSizeListArray.from_arrays(
        pa.array(flat.astype(np.float16, copy=False).reshape(-1), pa.float16()), dim)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32), pa.int32())
    mask = pa.array([s is None for s in states])
    return pa.ListArray.from_arrays(offsets, inner, mask=mask)


def _feature_stats(values: np.ndarray) -> dict:
    """count / mean / M2 of ``values`` [N, dim] in float64 (mergeable across shards)."""
    v = values.astype(np.float64)
    n = len(v)
    mean = v.mean(axis=0) if n else np.zeros(v.shape[1])
    m2 = ((v - mean) ** 2).sum(axis=0) if n else np.zeros(v.shape[1])
    return {"n": n, "mean": mean.tolist(), "m2": m2.tolist()}


def _merge_stats(parts: list[dict]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s parallel merge of per-shard (n, mean, M2)."""
    n, mean, m2 = 0, None, None
    for p in parts:
        nb = p["n"]
        if not nb:
            continue
        mb, m2b = np.asarray(p["mean"]), np.asarray(p["m2"])
        if mean is None:
            n, mean, m2 = nb, mb, m2b
            continue
        total = n + nb
        delta = mb - mean
        mean = mean + delta * nb / total
        m2 = m2 + m2b + delta ** 2 * n * nb / total
        n = total
    return n, mean, m2


def _write_shards(batch, *, run_root: str, expected: dict, columns: list[str],
                  fail_after: int | None):
    """Ray Data UDF: write every complete shard in ``batch`` (marker, then data file).

    A shard normally arrives whole in one batch. If Ray Data ever splits one, the pieces are
    kept as part files until all rows are present, then merged.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run = RunDir(run_root)
    results = []
    for shard in sorted(set(batch["shard"].to_pylist())):
        piece = batch.filter(pc.equal(batch["shard"], shard))
        want = expected[str(shard)]
        if run.finished(shard):
            continue
        if piece.num_rows != want:
            pdir = run.parts / run.shard_name(shard)
            key = hashlib.sha1("\n".join(sorted(piece["id"].to_pylist())).encode()).hexdigest()
            _write_parquet(piece, pdir / f"{key}.parquet")
            paths = sorted(pdir.glob("*.parquet"))
            pieces = [pq.read_table(p) for p in paths]
            if sum(t.num_rows for t in pieces) != want:
                continue
            piece = pa.concat_tables(pieces)
        results.append(_finish_shard(run, shard, piece, columns))
        shutil.rmtree(run.parts / run.shard_name(shard), ignore_errors=True)
        if fail_after is not None and len(data_files(run.root)) >= fail_after:
            raise RuntimeError(f"injected failure after {fail_after} finished shard(s) "
                               f"({FAULTS_ENV})")
    return pa.Table.from_pylist(results, schema=pa.schema(
        [("shard", pa.int32()), ("rows", pa.int64()), ("rejected", pa.int64()),
         ("residues", pa.int64()), ("finished_at", pa.float64())]))


def _finish_shard(run: RunDir, shard: int, table, columns: list[str]) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.sort_by([("id", "ascending")])  # deterministic content however it arrived
    reasons = table["_reject"]
    ok_mask = pc.is_null(reasons)
    ok = table.filter(ok_mask)
    bad = table.filter(pc.invert(ok_mask))
    seconds = {c: float(pc.sum(table[f"_sec{c}"]).as_py() or 0.0) for c in columns
               if f"_sec{c}" in table.column_names}
    data = ok.select(["id", "sequence", "length", "split", *columns])
    train = data.filter(pc.equal(data["split"], "train"))
    stats = {}
    for c in columns:
        typ = data.schema.field(c).type
        values = train[c].combine_chunks().flatten()
        if pa.types.is_list(typ):  # per-residue column: statistics over residues
            typ, values = typ.value_type, values.flatten()
        values = values.to_numpy(zero_copy_only=False)
        stats[c] = _feature_stats(values.reshape(-1, typ.list_size))
    marker = {"shard": shard, "rows": data.num_rows,
              "residues": int(pc.sum(data["length"]).as_py() or 0),
              "splits": {s: int(pc.sum(pc.equal(data["split"], s)).as_py() or 0)
                         for s in ("train", "validation")},
              "rejects": [{"id": r["id"], "source": r["source"], "record": r["record"],
                           "stage": "embed", "reason": r["_reject"]}
                          for r in bad.select(["id", "source", "record", "_reject"]).to_pylist()],
              "seconds": seconds, "stats": stats, "written": time.time()}
    _write_json(run.marker(shard), marker)  # marker first: data file present ⇒ marker present
    _write_parquet(data, run.data_file(shard))
    return {"shard": shard, "rows": data.num_rows, "rejected": bad.num_rows,
            "residues": marker["residues"], "finished_at": time.time()}


def _actor_resources(cfg: PrecomputeConfig, n_teachers: int) -> dict:
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


def _embed(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], stage: dict,
           faults: dict) -> dict:
    """Phase 2+3 for every unfinished shard. Returns throughput figures of this invocation."""
    import ray.data

    pending = [int(s) for s in stage["shards"] if not run.finished(int(s))]
    skipped = len(stage["shards"]) - len(pending)
    stats = {"shards_done_before": skipped, "shards_written": 0, "rows_embedded": 0,
             "residues_embedded": 0, "seconds": 0.0}
    if skipped:
        _log(cfg, f"resuming: {skipped} of {len(stage['shards'])} shard(s) already finished")
    if not pending:
        return stats
    for s in pending:  # leftovers of an interrupted attempt at an unfinished shard
        shutil.rmtree(run.parts / run.shard_name(s), ignore_errors=True)
    for tmp in run.data.glob(".*.tmp"):  # a write killed between temp file and rename
        tmp.unlink(missing_ok=True)
    res = _actor_resources(cfg, len(teachers))
    _log(cfg, f"embedding {sum(stage['shards'][str(s)] for s in pending):,} proteins in "
              f"{len(pending)} shard(s) with {len(teachers)} teacher(s) x "
              f"{cfg.actors_per_teacher} actor(s) ({res['num_cpus']} CPU, {res['num_gpus']} "
              f"GPU, {res['threads']} thread(s) each)")
    items = [{"shard": s, "path": str(run.stage_file(s))} for s in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_load_stage, batch_size=1, batch_format="pyarrow", num_cpus=0.25)
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
            # Ray Data's actor defaults (max_restarts=-1, max_task_retries=-1) restart a dead
            # actor and retry its batch; nothing to add here.
            num_cpus=res["num_cpus"], num_gpus=res["num_gpus"] or None)
    ds = ds.map_batches(_write_shards, batch_size=None, batch_format="pyarrow", num_cpus=0.25,
                        fn_kwargs=dict(run_root=str(run.root), expected=stage["shards"],
                                       columns=columns,
                                       fail_after=faults.get("fail_after_shards")))
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


# ---- phase 3: finish ------------------------------------------------------------------------
def _finalize(cfg: PrecomputeConfig, run: RunDir, teachers: list[dict], stage: dict,
              state: dict) -> tuple[Manifest, dict]:
    missing = [int(s) for s in stage["shards"] if not run.finished(int(s))]
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) still unfinished after the embedding pass "
                           f"(e.g. {missing[:5]}); rerun with the same arguments to resume")
    markers = [json.loads(run.marker(int(s)).read_text()) for s in stage["shards"]]
    rejects = list(stage["rejects"]) + [r for m in markers for r in m["rejects"]]
    _write_tsv(run.root / REJECTS_FILE, rejects)
    entries = []
    seconds: dict[str, float] = {}
    for t in teachers:
        n, mean, m2 = _merge_stats([m["stats"][t["column"]] for m in markers])
        std = np.sqrt(m2 / n) if n else None
        entry = TeacherEntry(
            name=t["name"], dim=t["dim"], source=t["source"], column=t["column"],
            pretrained=bool(t.get("pretrained")), sha256=t.get("sha256"),
            mean=[] if mean is None else mean.tolist(), std=[] if std is None else std.tolist())
        if t["spec"] in cfg.per_residue:
            entry.residue_column = residue_column(t["name"])
            n, mean, m2 = _merge_stats([m["stats"][entry.residue_column] for m in markers])
            if n:
                entry.residue_mean = mean.tolist()
                entry.residue_std = np.sqrt(m2 / n).tolist()
        entries.append(entry)
        seconds[t["name"]] = sum(m["seconds"].get(t["column"], 0.0) for m in markers)
    rows = sum(m["rows"] for m in markers)
    splits = {s: sum(m["splits"][s] for m in markers) for s in ("train", "validation")}
    manifest = Manifest(
        teachers=entries, max_len=cfg.max_len, rows=rows,
        inputs=[os.path.abspath(p) for p in cfg.inputs],
        validation_fraction=cfg.validation_fraction, split_counts=splits,
        extra={"num_shards": stage["num_shards"], "shards": len(markers),
               "records_read": stage["records"], "rejected": len(rejects),
               "rejects_file": REJECTS_FILE, "invalid": stage["invalid"],
               "duplicates": stage["duplicates"], "residues": sum(m["residues"] for m in markers),
               "on_invalid": cfg.on_invalid, "on_duplicate": cfg.on_duplicate,
               "teacher_specs": list(cfg.teachers), "std": "population (ddof=0) over train rows",
               "teacher_info": {t["name"]: {k: v for k, v in t.items() if k != "column"}
                                for t in teachers},
               "teacher_seconds": {k: round(v, 3) for k, v in seconds.items()}})
    manifest.save(run.root)
    # Staged copies are no longer needed; markers and run state stay for auditing.
    shutil.rmtree(run.stage, ignore_errors=True)
    shutil.rmtree(run.parts, ignore_errors=True)
    return manifest, seconds


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
    fp = _fingerprint(cfg)
    state = _claim(run, fp)
    if (run.root / MANIFEST_FILE).is_file():
        _log(cfg, f"{run.root} is already complete")
        return Manifest.load(run.root)
    faults = _faults()
    _ensure_ray(cfg)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = cfg.progress
    try:
        return _tracked(cfg, run, state, faults)
    finally:
        ctx.enable_progress_bars = bars  # the caller's setting, e.g. inside jobs/distill.py


def _tracked(cfg: PrecomputeConfig, run: RunDir, state: dict, faults: dict) -> Manifest:
    if not cfg.track:
        return _run(cfg, run, state, faults, None)
    from .tracking import setup_mlflow

    setup_mlflow(cfg.experiment)
    import mlflow

    with mlflow.start_run(run_name=f"precompute-{Path(cfg.output).name}") as mrun:
        mlflow.log_params({
            "teachers": ",".join(cfg.teachers)[:6000], "inputs": ",".join(cfg.inputs)[:6000],
            "output": os.path.abspath(cfg.output), "max_len": cfg.max_len,
            "validation_fraction": cfg.validation_fraction, "batch_tokens": cfg.batch_tokens,
            "actors_per_teacher": cfg.actors_per_teacher, "on_invalid": cfg.on_invalid,
            "on_duplicate": cfg.on_duplicate})
        return _run(cfg, run, state, faults, mrun)


def _run(cfg: PrecomputeConfig, run: RunDir, state: dict, faults: dict, mrun) -> Manifest:
    t0 = time.perf_counter()
    teachers_future = _resolve_teachers(cfg, run)
    stage = _stage(cfg, run, state)
    _log(cfg, f"staged in {time.perf_counter() - t0:.1f} s")
    teachers = teachers_future()
    emb = _embed(cfg, run, teachers, stage, faults)
    manifest, seconds = _finalize(cfg, run, teachers, stage, state)
    wall = time.perf_counter() - t0
    # Figures of this invocation (in the returned object only; the saved manifest describes
    # the dataset, not how many attempts it took).
    manifest.extra["this_run"] = {
        **emb, "wall_seconds": round(wall, 3),
        "proteins_per_s": emb["rows_embedded"] / emb["seconds"] if emb["seconds"] else 0.0,
        "tokens_per_s": emb["residues_embedded"] / emb["seconds"] if emb["seconds"] else 0.0}
    _log(cfg, f"done: {manifest.rows:,} rows, {manifest.extra['rejected']} rejected, "
              f"{emb['shards_written']} shard(s) written now in {wall:.1f} s -> {run.root}")
    if mrun is not None:
        import mlflow

        rate = emb["rows_embedded"] / emb["seconds"] if emb["seconds"] else 0.0
        metrics = {"records_read": stage["records"], "rows": manifest.rows,
                   "rejected": manifest.extra["rejected"], "num_shards": stage["num_shards"],
                   "shards_written": emb["shards_written"],
                   "shards_done_before": emb["shards_done_before"],
                   "proteins_per_s": rate,
                   "tokens_per_s": emb["residues_embedded"] / emb["seconds"]
                   if emb["seconds"] else 0.0, "wall_seconds": wall}
        # Per teacher: throughput of one actor while busy (summed busy time over all shards).
        res = manifest.extra["residues"]
        for name, sec in seconds.items():
            if sec > 0:
                metrics[f"{name}.proteins_per_s"] = manifest.rows / sec
                metrics[f"{name}.tokens_per_s"] = res / sec
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(run.root / MANIFEST_FILE))
        mlflow.log_artifact(str(run.root / REJECTS_FILE))
        manifest.extra["mlflow_run_id"] = mrun.info.run_id
    return manifest


# ---- readers --------------------------------------------------------------------------------
def open_teacher_dataset(run_dir: str | os.PathLike, teachers: list[str] | None = None,
                         max_len: int | None = None) -> tuple[Manifest, list[str]]:
    """Validate a teacher dataset for a reader; returns its manifest and data files.

    Raises:
        FileNotFoundError: no manifest (the run is unfinished: rerun precompute to resume).
        ManifestMismatch: a different truncation length, a missing teacher, data files that
            do not add up to the manifest's row count, or a column of the wrong dimension.
    """
    import pyarrow.parquet as pq

    manifest = Manifest.load(run_dir)
    manifest.check(teachers=teachers, max_len=max_len)
    files = data_files(run_dir)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if rows != manifest.rows:
        raise ManifestMismatch(f"{run_dir}: data files hold {rows} rows but the manifest says "
                               f"{manifest.rows}; files were added or removed after the run")
    if files:
        schema = pq.read_schema(files[0])
        for name in teachers or [t.name for t in manifest.teachers]:
            entry = manifest.teacher(name)
            if entry.column not in schema.names:
                raise ManifestMismatch(f"{files[0]} has no column {entry.column!r} for teacher "
                                       f"{name!r}")
            size = getattr(schema.field(entry.column).type, "list_size", None)
            if size != entry.dim:
                raise ManifestMismatch(f"column {entry.column!r} has dimension {size}, manifest "
                                       f"says {entry.dim}")
    return manifest, files


def _columns(manifest: Manifest, teachers: list[str] | None) -> list[str]:
    names = teachers or [t.name for t in manifest.teachers]
    return ["id", "sequence", "length", "split"] + [manifest.teacher(n).column for n in names]


def load_teacher_dataset(run_dir: str | os.PathLike, teachers: list[str] | None = None,
                         max_len: int | None = None, *, split: str | None = None):
    """The dataset as a ``ray.data.Dataset`` after validating its manifest (see
    :func:`open_teacher_dataset`). Columns: id, sequence, length, split and the requested
    teachers' columns (all teachers by default); ``split`` keeps only ``train`` or
    ``validation`` rows."""
    import ray.data

    manifest, files = open_teacher_dataset(run_dir, teachers, max_len)
    if not files:
        raise ManifestMismatch(f"{run_dir}: the dataset has no data files")
    ds = ray.data.read_parquet(files, columns=_columns(manifest, teachers),
                               override_num_blocks=len(files))
    if split is not None:
        ds = ds.map_batches(_keep_split, batch_format="pyarrow", fn_kwargs={"split": split})
    return ds


def _keep_split(batch, *, split: str):
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch["split"], split))


def read_teacher_table(run_dir: str | os.PathLike, teachers: list[str] | None = None,
                       max_len: int | None = None, *, split: str | None = None):
    """The dataset as one ``pyarrow.Table`` (small data / single process), validated like
    :func:`load_teacher_dataset`, rows sorted by id."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifest, files = open_teacher_dataset(run_dir, teachers, max_len)
    cols = _columns(manifest, teachers)
    tables = [pq.read_table(f, columns=cols) for f in files]
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in cols})
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table.sort_by([("id", "ascending")])


def teacher_matrix(table, manifest: Manifest, teacher: str) -> np.ndarray:
    """One teacher's embeddings from a table as a float32 ``[N, dim]`` array."""
    entry = manifest.teacher(teacher)
    flat = table[entry.column].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(-1, entry.dim)


