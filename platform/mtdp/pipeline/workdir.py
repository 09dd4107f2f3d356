"""A pipeline's work folder (the unit of resume): the run state, staged shards and their
summary, decompressed inputs; and the rejects listing. The embedding job uses ``WORKDIR``,
a precompute its run directory (which adds the dataset, :class:`mtdp.precompute.rundir.RunDir`)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..io import atomic_open

WORK_DIR = "work"


class WorkDir:
    """Paths of a work folder: ``ROOT/work/{run.json, stage/, input/}``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.work = self.root / WORK_DIR
        self.state = self.work / "run.json"
        self.stage = self.work / "stage"
        self.stage_done = self.stage / "_SUCCESS.json"
        self.inputs = self.work / "input"

    def shard_name(self, shard: int) -> str:
        return f"shard-{shard:05d}"

    def stage_file(self, shard: int) -> Path:
        return self.stage / f"{self.shard_name(shard)}.parquet"


def log(label: str, progress: bool, msg: str) -> None:
    """A progress line ``[label] msg`` on stderr (when ``progress``)."""
    if progress:
        print(f"[{label}] {msg}", file=sys.stderr, flush=True)


def write_rejects_tsv(path: Path, rejects: list[dict]) -> None:
    """The rejects listing: ``id, source, record, stage, reason`` per rejected record."""
    with atomic_open(path) as fh:
        fh.write("id\tsource\trecord\tstage\treason\n")
        for r in rejects:
            reason = str(r["reason"]).replace("\t", " ").replace("\n", " ")
            fh.write(f"{r['id']}\t{r['source']}\t{r['record']}\t{r['stage']}\t{reason}\n")
