"""Settings of a teacher precompute run (``jobs/precompute_teachers.py`` flags / YAML keys)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import Config, option
from ..sequences import DEFAULT_MAX_LEN
from ..teacher_data import DEFAULT_VALIDATION_FRACTION


@dataclass
class PrecomputeConfig(Config):
    """Everything that defines a precompute run (CLI flags / YAML keys of the same names)."""

    inputs: list[str] = option(help=(
        "input files: FASTA (plain or .gz) or Parquet with columns id, sequence; a list "
        "'[a.fasta, b.parquet]' or comma-separated"))
    teachers: list[str] = option(help=(
        "teachers: registry names (see `mtdp teachers`, e.g. esm2_t33_650M_UR50D, "
        "prot_t5_xl_uniref50, tiny-random-esm2) or checkpoint paths (ESM-2 .pt, ProtT5 dir)"))
    output: str = option(help="run directory to create or resume (data/*.parquet + "
                              "manifest.json)")
    per_residue: list[str] = option(factory=list, help=(
        "teachers (as named in --teachers) whose per-residue states are written too, column "
        "r_<name>, for per-residue distillation (distill --residue-teachers); costs "
        "residues x dim x 2 bytes each"))
    residue_window: int = option(1, ge=1, le=1000, help=(
        "per-residue states kept as means over windows of this many residues (1: every "
        "residue); 8 stores UniRep-1900's states in an eighth of the space, and the student "
        "is distilled on the same windows"))
    store: str = option("", help=(
        "embedding store the teachers' vectors are committed to (default: RUN/work/store); a "
        "shared store (a folder or s3://..., as the embedding job's --store) lets runs and "
        "jobs reuse each other's teacher embeddings"))
    max_len: int = option(DEFAULT_MAX_LEN, ge=1, help=(
        "proteins longer than this are cut to it (as the student will see them), by "
        "length_rule"))
    length_rule: str = option("truncate", choices=("truncate", "crop"), help=(
        "truncate: a long protein's first max_len residues (the paper's); crop: one window of "
        "max_len residues, N-terminal, C-terminal or placed at random, a third each by a "
        "stable hash of the id, so the student sees both ends (mtdp.sequences.crop)"))
    validation_fraction: float = option(DEFAULT_VALIDATION_FRACTION, ge=0.0, lt=1.0, help=(
        "fraction of proteins in the validation split (stable hash of the id)"))
    batch_tokens: int | None = option(None, ge=1, help=(
        "padded tokens per teacher forward pass (default 8192 on CPU, 65536 on GPU)"))
    actors_per_teacher: int = option(1, ge=1, help="model replicas (Ray actors) per teacher")
    num_shards: int | None = option(None, ge=1, help=(
        "number of output shards (default: records / shard_size; fixed at the first run)"))
    shard_size: int = option(4096, ge=1, help=(
        "target proteins per shard when num_shards is not given (the unit of resume)"))
    on_invalid: str = option("error", choices=("error", "skip"), help=(
        "invalid records (bad letters, empty): 'error' stops before embedding and lists them "
        "all; 'skip' writes them to rejects.tsv"))
    on_duplicate: str = option("error", choices=("error", "keep-first"), help=(
        "repeated ids: 'error' stops and lists them; 'keep-first' keeps the first in input "
        "order and writes the others to rejects.tsv"))
    commit_rows: int = option(2048, ge=1, help=(
        "embeddings per store commit (at most this much work per teacher is lost when a run "
        "is killed)"))
    retries: int = option(2, ge=0, help=(
        "extra attempts for a single protein whose embedding fails, before it is rejected"))
    cpus_per_actor: float | None = option(None, gt=0.0, help=(
        "CPUs reserved per teacher actor (default: GPU clusters 1, else the free CPUs split "
        "across actors, leaving one for reading/writing)"))
    gpus_per_actor: float = option(1.0, ge=0.0, help=(
        "GPUs per teacher actor when the cluster has GPUs (fractions share a GPU)"))
    range_mb: float = option(16.0, gt=0.0, help=(
        "size of one FASTA read piece in MB (parallelism of parsing)"))
    ray_address: str | None = option(None, help=(
        "Ray cluster to use (default: $RAY_ADDRESS, as set by `ray job submit`, else a new "
        "local Ray)"))
    experiment: str = option("mtdp-precompute", help="MLflow experiment name")
    track: bool = option(True, help="log the run to MLflow")
    progress: bool = option(True, help="show progress bars and messages")

    def validate(self) -> None:
        """Raise ``ValueError`` (``FileNotFoundError`` for a missing input) naming the first
        bad setting that its field's range alone cannot catch."""
        if not self.inputs:
            raise ValueError("no inputs given (--inputs FILE[,FILE...])")
        if not self.teachers:
            raise ValueError("no teachers given (--teachers NAME[,NAME...])")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"teachers listed twice: {self.teachers}")
        from ..models.teachers import REGISTRY

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
