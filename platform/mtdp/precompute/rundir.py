"""A precompute run directory: its layout, the run state that makes reruns resume, and the
rules for refusing a rerun that would mix different runs.

``RUN/data/*.parquet`` and ``RUN/manifest.json`` are the dataset (:mod:`mtdp.teacher_data`);
``RUN/work/`` holds the private state: ``run.json`` (the arguments' fingerprint), staged
shards, per-shard done-markers (row count, checksum, statistics) and part files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..io import atomic_open, write_json
from ..teacher_data import DATA_DIR, MANIFEST_FILE, ManifestMismatch, data_files
from .config import PrecomputeConfig

#: Environment variable with a JSON object of fault injections, for tests and drills only:
#: ``fail_after_shards`` (N: the writer raises once N shards are finished), ``crash_actor_once``
#: (a marker path: the first teacher call kills its actor process), ``unembeddable_ids`` (ids
#: whose embedding raises).
FAULTS_ENV = "MTDP_PRECOMPUTE_FAULTS"
WORK_DIR = "work"
REJECTS_FILE = "rejects.tsv"
_STATE_VERSION = 1


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


def shard_of(seq_id: str, num_shards: int) -> int:
    """Shard of a protein: stable hash of its id (salted, so independent of the split)."""
    h = hashlib.sha1(b"mtdp-shard:" + seq_id.encode()).digest()
    return int.from_bytes(h[:8], "big") % num_shards


def fingerprint(cfg: PrecomputeConfig) -> dict:
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


def claim(run: RunDir, fp: dict) -> dict:
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
    write_json(run.state, state)
    return state


def faults() -> dict:
    """The fault injections of :data:`FAULTS_ENV` (empty outside tests and drills)."""
    text = os.environ.get(FAULTS_ENV)
    return json.loads(text) if text else {}


def log(cfg: PrecomputeConfig, msg: str) -> None:
    """A progress line on stderr (when ``cfg.progress``)."""
    if cfg.progress:
        print(f"[precompute] {msg}", file=sys.stderr, flush=True)


def write_rejects_tsv(path: Path, rejects: list[dict]) -> None:
    """The rejects listing: ``id, source, record, stage, reason`` per rejected record."""
    with atomic_open(path) as fh:
        fh.write("id\tsource\trecord\tstage\treason\n")
        for r in rejects:
            reason = str(r["reason"]).replace("\t", " ").replace("\n", " ")
            fh.write(f"{r['id']}\t{r['source']}\t{r['record']}\t{r['stage']}\t{reason}\n")


def drop_damaged(run: RunDir, cfg: PrecomputeConfig) -> list[str]:
    """Find finished shards whose data file is not the one committed (truncated, replaced,
    unreadable: :func:`mtdp.teacher_data.verify_shard` against the record in its marker, or in
    the manifest of a complete run), name them, and remove them with their markers — and the
    manifest, since the dataset is then incomplete — so this run recomputes them. Returns the
    damaged files' names."""
    import json

    from ..teacher_data import Manifest, verify_shard

    records: dict[str, dict] = {}
    if (run.root / MANIFEST_FILE).is_file():
        records = Manifest.load(run.root).files
    bad = []
    for f in map(Path, data_files(run.root)):
        marker = run.done / f.with_suffix(".json").name
        rec = records.get(f.name) or (json.loads(marker.read_text()).get("file")
                                      if marker.is_file() else None)
        problem = verify_shard(f, rec)
        if problem:
            print(f"[precompute] damaged shard {f}: {problem}; recomputing it",
                  file=sys.stderr, flush=True)
            bad.append(f.name)
            f.unlink()
            marker.unlink(missing_ok=True)
    if bad:
        (run.root / MANIFEST_FILE).unlink(missing_ok=True)
    return bad
