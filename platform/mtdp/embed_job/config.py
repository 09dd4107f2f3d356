"""Settings of an embedding job (``jobs/embed.py`` flags / YAML keys of the same names)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import Config, option
from ..sequences import TOO_LONG_POLICIES


@dataclass
class EmbedJobConfig(Config):
    """Embed every protein of the inputs with one model into the store."""

    inputs: list[str] = option(help=(
        "input files: FASTA (plain or .gz) or Parquet with columns id, sequence; a list "
        "'[a.fasta, b.parquet]' or comma-separated"))
    model: str = option(help=(
        "the model: student directory, MLflow URI (models:/NAME/V), teacher name or "
        "checkpoint, or a baseline (see `mtdp embed --help`)"))
    store: str = option(help="embedding store: a folder (created if absent) or s3://...")
    run_name: str = option("", help=(
        "name of this input run in the store (its ids table ids_<name>; default: from the "
        "first input's file name)"))
    workdir: str = option("", help=(
        "staging folder, the unit of resume (default: runs/embed/<run_name>)"))
    too_long: str = option("truncate", choices=TOO_LONG_POLICIES, help=(
        "sequences longer than the model's limit: cut (truncate), refuse (error) or embed "
        "overlapping windows (window)"))
    max_len: int | None = option(None, ge=1, help="length limit (default and ceiling: the "
                                                   "model's)")
    on_invalid: str = option("error", choices=("error", "skip"), help=(
        "invalid records: 'error' stops before embedding and lists them all; 'skip' lists "
        "them in WORKDIR/rejects.tsv"))
    on_duplicate: str = option("error", choices=("error", "keep-first"), help=(
        "repeated ids: 'error' stops and lists them; 'keep-first' keeps the first"))
    actors: int = option(1, ge=1, help="model replicas (Ray actors)")
    cpus_per_actor: float | None = option(None, gt=0.0, help=(
        "CPUs per actor (default: GPU clusters 1, else the free CPUs split across actors, "
        "leaving one for reading and writing)"))
    gpus_per_actor: float = option(1.0, ge=0.0, help=(
        "GPUs per actor when the cluster has GPUs (fractions share a GPU)"))
    batch_tokens: int | None = option(None, ge=1, help=(
        "padded tokens per forward pass (default 8192 on CPU, 65536 on GPU)"))
    precision: str = option("auto", choices=("auto", "fp32", "bf16"), help=(
        "the actors' arithmetic on CPU: auto (bf16 where the CPU has bf16 matrix units), "
        "fp32 or bf16"))
    shard_size: int = option(4096, ge=1, help="proteins per staged shard")
    commit_rows: int = option(2048, ge=1, help=(
        "embeddings per store commit (at most this much work is lost when a job is killed)"))
    range_mb: float = option(16.0, gt=0.0, help="size of one FASTA read piece in MB")
    ray_address: str | None = option(None, help=(
        "Ray cluster (default: $RAY_ADDRESS, as `ray job submit` sets it, else a local Ray)"))
    experiment: str = option("mtdp-embed", help="MLflow experiment")
    track: bool = option(True, help="log the run to MLflow")
    progress: bool = option(True, help="show progress")

    def resolved(self) -> "EmbedJobConfig":
        """A copy with ``run_name`` and ``workdir`` filled in."""
        import dataclasses
        import re
        from pathlib import Path

        name = self.run_name
        if not name and self.inputs:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.inputs[0]).name.split(".")[0])
        return dataclasses.replace(self, run_name=name,
                                   workdir=self.workdir or str(Path("runs/embed") / name))

    def validate(self) -> None:
        """Raise ``ValueError`` / ``FileNotFoundError`` naming the first bad setting."""
        if not self.inputs:
            raise ValueError("no inputs given (--inputs FILE[,FILE...])")
        for path in self.inputs:
            if os.path.isdir(path):
                raise ValueError(f"input {path} is a directory, not a file")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"input {path}: no such file")
        if not self.model or not self.store:
            raise ValueError("give --model and --store")
