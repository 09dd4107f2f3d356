"""A precompute run directory: its layout, the run state that makes reruns resume, and the
rules for refusing a rerun that would mix different runs.

``RUN/data/*.parquet`` and ``RUN/manifest.json`` are the dataset (:mod:`mtdp.teacher_data`);
``RUN/work/`` holds the private state: ``run.json`` (the arguments' fingerprint), staged
shards, the teachers' provenance and store identities, the embedding passes' record
(seconds, rejects), per-shard done-markers (row count, checksum, statistics) and, unless
``--store`` names another, the embedding store the teachers' vectors are committed to.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..io import write_json
from ..pipeline.workdir import WorkDir
from ..pipeline.workdir import log as _log
from ..teacher_data import DATA_DIR, MANIFEST_FILE, ManifestMismatch, data_files
from .config import PrecomputeConfig

#: Environment variable with a JSON object of fault injections, for tests and drills only:
#: ``fail_after_shards`` (N: assembly raises once N shards are finished), and those of
#: :mod:`mtdp.pipeline.stages` (``crash_actor_once``, ``unembeddable_sequences``,
#: ``fail_after_batches``) for every teacher's embedding pass.
FAULTS_ENV = "MTDP_PRECOMPUTE_FAULTS"
REJECTS_FILE = "rejects.tsv"
STORE_DIR = "store"
_STATE_VERSION = 1


class RunDir(WorkDir):
    """Paths of one run directory: the dataset and the private ``work/`` state (staging, the
    teachers' provenance, the embedding passes' record, per-shard done-markers, and the
    default embedding store)."""

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(root)
        self.data = self.root / DATA_DIR
        self.teachers = self.work / "teachers.json"
        self.passes = self.work / "passes.json"
        self.done = self.work / "done"
        self.store = self.work / STORE_DIR

    def data_file(self, shard: int) -> Path:
        return self.data / f"{self.shard_name(shard)}.parquet"

    def marker(self, shard: int) -> Path:
        return self.done / f"{self.shard_name(shard)}.json"

    def finished(self, shard: int) -> bool:
        """A shard is finished once its data file exists (its marker is written before)."""
        return self.data_file(shard).is_file()


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
            **({"per_residue": sorted(cfg.per_residue)} if cfg.per_residue else {}),
            **({"residue_window": cfg.residue_window} if cfg.residue_window != 1 else {}),
            **({"length_rule": cfg.length_rule} if cfg.length_rule != "truncate" else {})}


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
        # Nothing finished: start over cleanly, but keep the default store: its vectors are
        # keyed by sequence and model identity, so they stay valid under any arguments.
        for entry in run.work.iterdir() if run.work.is_dir() else []:
            if entry != run.store:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
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
    _log("precompute", cfg.progress, msg)


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
