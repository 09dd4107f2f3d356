"""A whole distillation from one config file: the pool's proteins (:mod:`.pool`), their
teacher labels (:mod:`mtdp.precompute`: vectors and window means in the store, so a rerun or a
larger run reuses them), the student trained on them (:func:`.ray_job.run_distill`, Ray Train),
each stage timed. ``python jobs/distill.py --config jobs/configs/unirep-cpu.yaml`` runs one;
``jobs/configs/demo.yaml`` is the embedded default. Rerunning the same command resumes:
finished labels are kept and training continues from its last checkpoint."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config, option
from ..io import write_json
from ..sequences import LENGTH_RULES
from .config import DistillConfig
from .ray_job import DistillResult, read_history, run_distill

#: The recipes shipped in a source checkout.
CONFIGS = Path(__file__).resolve().parents[3] / "jobs" / "configs"
STUDENT_RUN = "student"


@dataclass
class RecipeConfig(Config):
    """The pool, its labels, the training (``distill``: :class:`DistillConfig` fields) and the
    closing probe."""

    workdir: str = option("runs/demo", help="where the pool, labels, checkpoints and student go")
    pool: str = option("swissprot", help=(
        "proteins to distil on: swissprot (the shared Swiss-Prot 2014 pool, no benchmark "
        "sequence) or a FASTA file"))
    proteins: int = option(2000, ge=16, le=10_000_000, help=(
        "the first N proteins of a seeded order of the pool (a larger N keeps a smaller N's)"))
    pool_seed: int = option(0, ge=0, help="seed of the pool's order")
    max_len: int = option(256, ge=8, le=100_000, help=(
        "residues per labelled protein: longer ones are cut by length_rule"))
    length_rule: str = option("truncate", choices=LENGTH_RULES, help=(
        "truncate (first max_len residues) or crop (N-terminal, C-terminal or placed at "
        "random: the student sees both ends)"))
    teachers: list[str] = option(factory=lambda: ["unirep256", "unirep64"],
                                 help="teachers that label the pool")
    per_residue: list[str] = option(factory=list, help=(
        "teachers whose per-residue states are labelled and distilled"))
    residue_window: int = option(1, ge=1, le=1000, help=(
        "per-residue states kept as means over windows of this many residues"))
    validation_fraction: float = option(0.05, gt=0.0, lt=1.0, help="held-out share of the pool")
    store: str = option("", help="embedding store of the labels (default: WORKDIR/store)")
    cpus_per_actor: float | None = option(None, gt=0.0, help=(
        "CPUs of each teacher actor while labelling (default: precompute's rule)"))
    probe_proteins: int = option(800, ge=0, help=(
        "unseen proteins (DeepLoc 2.0 partition 4) of the closing probe (0: none)"))
    distill: dict[str, Any] = option(factory=dict, help="DistillConfig fields of the training")

    def validate(self) -> None:
        """Refuse training settings that are not DistillConfig fields, naming them."""
        unknown = set(self.distill) - set(DistillConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"distill: unknown field(s) {sorted(unknown)}")
        if self.residue_window > 1 and not self.per_residue:
            raise ValueError("residue_window needs per_residue teachers")


def is_recipe(path: str | Path) -> bool:
    """True if the YAML file ``path`` is a recipe (it has a ``distill:`` mapping), not a
    plain :class:`DistillConfig`."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    return isinstance(data, dict) and isinstance(data.get("distill"), dict)


def load_recipe(path: str | Path, **overrides: Any) -> RecipeConfig:
    """A recipe from its YAML file (``overrides`` win)."""
    cfg = load_config(RecipeConfig, path)
    return RecipeConfig(**{**cfg.__dict__, **overrides})


def labels_dir(cfg: RecipeConfig) -> Path:
    """The teacher dataset of these labelling settings (its own folder per settings)."""
    key = json.dumps([cfg.pool, cfg.proteins, cfg.pool_seed, cfg.max_len, cfg.length_rule,
                      cfg.teachers, cfg.per_residue, cfg.residue_window,
                      cfg.validation_fraction])
    return Path(cfg.workdir).resolve() / f"labels-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def store_uri(cfg: RecipeConfig) -> str:
    """The recipe's embedding store: ``store``, else ``WORKDIR/store``."""
    return cfg.store or str(Path(cfg.workdir).resolve() / "store")


def label_pool(cfg: RecipeConfig, timings: dict[str, float]) -> str:
    """The pool written (``pool.fasta``) and labelled once (``data/``, the teacher dataset):
    returns the dataset's folder."""
    from ..precompute import PrecomputeConfig, run_precompute
    from ..teacher_data import MANIFEST_FILE
    from .pool import write_pool

    out = labels_dir(cfg)
    if (out / "data" / MANIFEST_FILE).is_file():
        return str(out / "data")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    fasta, n, residues = write_pool(cfg.proteins, cfg.pool_seed, out / "pool.fasta",
                                    None if cfg.pool == "swissprot" else cfg.pool)
    print(f"[recipe] pool: {n:,} proteins ({residues:,} residues) -> labels by "
          f"{', '.join(cfg.teachers)} in {out}", flush=True)
    run_precompute(PrecomputeConfig(
        inputs=[str(fasta)], teachers=cfg.teachers, output=str(out / "data"),
        per_residue=cfg.per_residue, residue_window=cfg.residue_window, max_len=cfg.max_len,
        length_rule=cfg.length_rule, validation_fraction=cfg.validation_fraction,
        store=store_uri(cfg),
        cpus_per_actor=cfg.cpus_per_actor))
    timings["label"] = time.perf_counter() - t0
    return str(out / "data")


def distill_config(cfg: RecipeConfig, data: str) -> DistillConfig:
    """The training's :class:`DistillConfig`: one run per recipe, resumed when it exists."""
    out = Path(cfg.workdir).resolve()
    resume = (out / "ray" / STUDENT_RUN).is_dir()
    return DistillConfig(**{"output": str(out), "residue_teachers": cfg.per_residue,
                            **cfg.distill, "data": data, "run_name": STUDENT_RUN,
                            "resume": resume})


def start_point(cfg: DistillConfig, out: Path) -> Path:
    """The run's exact untrained student (same builder, same seed), saved once: the baseline
    that shows what training added (``student:WORKDIR/random-init`` in the benchmark)."""
    from ..teacher_data import Manifest
    from .batches import TeacherStats
    from .core import build_student

    if not (out / "config.json").is_file():
        man = Manifest.load(cfg.data)
        stats = TeacherStats.from_manifest(man, cfg.teachers or None, cfg.residue_teachers)
        build_student(cfg, stats, man.max_len, {"init": "random", "seed": cfg.seed}).save(out)
    return out


#: Recipe fields a rerun may change and still continue the run in its workdir (how long and
#: how visibly it trains, on what); any other change needs a new workdir.
RERUN_MAY_CHANGE = frozenset({
    "workdir", "store", "cpus_per_actor", "probe_proteins", "distill.epochs",
    "distill.max_steps", "distill.log_every", "distill.eval_every", "distill.checkpoint_every",
    "distill.num_workers", "distill.cpus_per_worker", "distill.use_gpu", "distill.mlflow",
    "distill.experiment", "distill.register_as", "distill.train_memory_mb",
    "distill.max_failures"})
#: DistillConfig fields the recipe sets itself (they follow the workdir).
_SET_BY_RECIPE = ("data", "output", "run_name", "resume")


def recipe_record(cfg: RecipeConfig) -> dict[str, Any]:
    """The recipe as it runs, flat and as JSON reads it back: its own fields and the resolved
    training config (defaults filled in, so writing a default out changes nothing)."""
    import dataclasses

    flat: dict[str, Any] = {k: v for k, v in cfg.__dict__.items() if k != "distill"}
    dcfg = dataclasses.asdict(distill_config(cfg, ""))
    flat.update({f"distill.{k}": v for k, v in dcfg.items() if k not in _SET_BY_RECIPE})
    return json.loads(json.dumps(flat, default=str))


def check_workdir(cfg: RecipeConfig, work: Path) -> None:
    """Refuse to continue another recipe's training in ``work`` (it would resume that run's
    checkpoints, or return its finished student, for the new settings), naming the changed
    fields; the recipe is kept in ``WORKDIR/recipe.json``."""
    now, saved = recipe_record(cfg), work / "recipe.json"
    trained = (work / "ray" / STUDENT_RUN).is_dir() or (work / STUDENT_RUN).is_dir()
    if trained and not saved.is_file():
        print(f"[recipe] {work} has a run but no record of its recipe (made before recipes "
              "were recorded): taken to be this one", flush=True)
    elif trained:
        old = json.loads(saved.read_text())
        changed = sorted(k for k in set(now) | set(old)
                         if k not in RERUN_MAY_CHANGE and now.get(k) != old.get(k))
        if changed:
            raise ValueError(
                f"{work} holds a run of another recipe (" + "; ".join(
                    f"{k}: {old.get(k)!r} -> {now.get(k)!r}" for k in changed)
                + "): give another workdir, or remove that one to start over")
    write_json(saved, now)


def run_recipe(cfg: RecipeConfig) -> tuple[DistillResult, dict[str, float]]:
    """Label (once), distil (resumed when interrupted); returns the result and stage seconds
    (also in ``WORKDIR/timings.json``, each stage as first computed)."""
    cfg.validate()
    work = Path(cfg.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    check_workdir(cfg, work)
    tfile = work / "timings.json"
    timings = json.loads(tfile.read_text()) if tfile.is_file() else {}
    data = label_pool(cfg, timings)
    write_json(tfile, timings)
    done = work / STUDENT_RUN / "student"
    if (done / "config.json").is_file():  # finished earlier: exported after the last step
        history = read_history(work / "ray" / STUDENT_RUN)
        print(f"[recipe] {done} is finished; nothing to train", flush=True)
        return DistillResult(STUDENT_RUN, str(done), history[-1] if history else {},
                             int(history[-1].get("step", 0)) if history else 0,
                             history=history), timings
    dcfg = distill_config(cfg, data)
    start_point(dcfg, work / "random-init")
    t0 = time.perf_counter()
    result = run_distill(dcfg)
    timings["distill"] = timings.get("distill", 0.0) + time.perf_counter() - t0
    write_json(tfile, timings)
    return result, timings
