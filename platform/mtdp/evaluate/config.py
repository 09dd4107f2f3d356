"""Settings of a benchmark run (``tune/benchmark.py`` flags / YAML keys of the same names)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import option
from .probes import PROTOCOLS, SPLITS, ProbeConfig
from .tasks import resolve_task_names


@dataclass
class BenchmarkConfig(ProbeConfig):
    """Everything a benchmark run needs (CLI flags / YAML keys of ``tune/benchmark.py``)."""

    models: list[str] = option(factory=list, help=(
        "model specs, comma-separated: student dirs (student:PATH), MLflow URIs, teacher "
        "names (esm2_t33_650M_UR50D, tiny-random-esm2 ...), local checkpoints, or baselines "
        "aac, kmer1..kmer3, random-student[:preset]; default: the newest registered "
        "'mtdp-student' in MLflow (what `python jobs/distill.py` registers), else the shipped "
        "mtdp-unirep, next to aac and kmer2"))
    tasks: list[str] = option(factory=lambda: ["all"], help=(
        "tasks, comma-separated (membrane, localization, go, meltome, esol, deepsol, go_pdb, "
        "go_pdb_bp, go_pdb_cc) or 'all' (the five paper tasks + deepsol; absent data is "
        "skipped)"))
    folds: int = option(10, ge=2, help=(
        "cross-validation folds (split homology: at most this many, one or more homology "
        "partitions each)"))
    split: str = option("homology", choices=SPLITS, help=(
        "homology: folds follow the data's homology partitions where a task has them "
        "(DeepLoc 2.0, GO; no sequence cluster on both sides), random folds elsewhere (said "
        "in the report); random: seeded random folds for every task, as in the paper"))
    max_proteins: int | None = option(None, ge=2, help=(
        "seeded random subset of at most this many proteins per task (speed); None = all"))
    seed: int = option(42, ge=0, help="seed of folds, subsets and probes")
    protocol: str = option("inner-val", choices=PROTOCOLS, help=(
        "inner-val: early stopping on a validation split of the training folds; paper: best "
        "epoch picked on the test fold (OPTIMISTIC, for comparison only)"))
    search: int = option(0, ge=0, help=(
        "probe hyper-parameter samples per fold (lr, hidden, weight decay) chosen on the "
        "inner validation split; 0 = the fixed config"))
    teacher: str = option("", help=(
        "a model of --models (spec or name) whose transfer the report measures: each other "
        "model's ratio to it and gain capture over aac (add aac to --models), and R² of its "
        "embedding by ridge from each model"))
    output_dir: str = option("runs/benchmark", help=(
        "where summary.md/.csv, trials.csv, benchmark.png go"))
    cache_dir: str | None = option(None, help=(
        "embedding store the tasks' embeddings are read from and written to (a folder or "
        "s3://...; default: OUTPUT_DIR/../embedding-store)"))
    data_dir: str | None = option(None, help=(
        "task data folder (default: $MTDP_DATA_DIR, else ../shared/data beside a checkout)"))
    device: str | None = option(None, help=(
        "embedding device (cpu, cuda ...; default: best found)"))
    batch_tokens: int | None = option(None, ge=1, help=(
        "padded tokens per embedding batch (default: by device)"))
    threads: int | None = option(None, ge=1, help=(
        "torch CPU threads for embedding in the driver (default: torch's choice)"))
    cpus_per_trial: float = option(0.5, gt=0.0, help=(
        "CPUs reserved per Tune trial (fractional: leaves room for other Ray work)"))
    max_concurrent: int | None = option(None, ge=1, help=(
        "trials at a time (default: number of CPUs in the Ray cluster)"))
    experiment: str = option("mtdp-benchmark", help="MLflow experiment")
    run_name: str | None = option(None, help="MLflow parent run name")
    address: str | None = option(None, help="Ray cluster address (default: start a local Ray)")

    def probe_config(self) -> ProbeConfig:
        """The probe part of this config."""
        return ProbeConfig(**{f.name: getattr(self, f.name)
                              for f in dataclasses.fields(ProbeConfig)})

    def model_specs(self) -> list[str]:
        """The models to benchmark (see ``models``: the default is resolved here)."""
        specs = [m for m in self.models if m]
        return specs or default_models()[0]

    def validate(self) -> None:
        """Raise ValueError naming the bad option (combinations; single fields are checked on
        construction)."""
        if self.search and self.protocol == "paper":
            raise ValueError("--search selects on the inner validation split; it cannot be "
                             "combined with --protocol paper")
        if self.max_proteins is not None and self.max_proteins < 2 * self.folds:
            raise ValueError(f"--max-proteins {self.max_proteins} is too small for "
                             f"{self.folds} folds")
        resolve_task_names(self.tasks)
        self.model_specs()


BASELINES = ("aac", "kmer2")
#: The student shipped with the package (mtdp.pretrained).
SHIPPED = "mtdp-unirep"


def default_models() -> tuple[list[str], str]:
    """No ``--models``: the newest registered student (if MLflow has one), else the student
    shipped with the package, next to the baselines; and a line saying which (printed by the
    benchmark) — the same rule as ``serve`` and ``mtdp embed``."""
    from ..tracking import STUDENT_MODEL_NAME, latest_student_uri, tracking_uri

    uri = latest_student_uri()
    if uri:
        return [uri, *BASELINES], (f"no --models: the newest registered student {uri} next "
                                   f"to {', '.join(BASELINES)}")
    return [SHIPPED, *BASELINES], (
        f"no --models and no registered '{STUDENT_MODEL_NAME}' in MLflow at {tracking_uri()}: "
        f"the shipped student {SHIPPED} next to {', '.join(BASELINES)} (`python "
        "jobs/distill.py` trains and registers your own)")
