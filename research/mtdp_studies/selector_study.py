"""Does the RL teacher selector earn its place? Controlled teacher sets where the best teacher
differs per protein, every selector mode on the same student, seed and steps.

Everything in process (no Ray, no MLflow), on this machine's CPUs:

1. **tasks** (:mod:`mtdp.evaluate.tasks`, seeded subsets) and a **pool** of DeepLoc 2.0
   proteins of partitions 0-3 without any task protein (:func:`~mtdp.evaluate.pools.
   distillation_pool`), split into training proteins and a held-out validation part;
2. **teacher embeddings** of the pool, cached as ``.npy``: UniRep-1900, UniRep-256, UniRep-64
   (real pretrained models) and a composition teacher (``kmer2``);
3. **teacher sets** (:func:`teacher_sets`), each teacher a target matrix plus the proteins it
   is known to be good for: ``real`` (the three UniReps), ``junk`` (UniRep-1900, composition,
   UniRep-1900 shuffled between proteins), and per-sample heterogeneous sets where a teacher is
   real for one group and shuffled for the rest, by a rule the selector is not shown
   (``hetero-membrane``: UniRep-1900 for membrane proteins, UniRep-256 for soluble ones;
   ``hetero-kingdom``: UniRep-1900 for Metazoa, UniRep-256 for the other kingdoms);
4. **students**: per set every mode (``rl``, ``uniform``, ``random``, each ``single:*``, the
   ``oracle`` that picks the teachers known to be good) plus ``rl`` variants (reward, state,
   warm-up, policy learning rate), and the MLM-only and untrained students as floors;
5. **evaluation** (:mod:`.selector_eval`): linear probes on the tasks' homology folds (the same
   folds for every student: paired differences), a validation score on the pool's held-out
   part (what chooses the default), how much UniRep-1900 a ridge map recovers from each
   student's embedding per protein group, and the final policy's selection rates per group;
6. the table (:mod:`.selector_report`).

Each student's result is kept as JSON under ``workdir``, so a rerun only does what is missing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtdp.config import Config, option
from mtdp.io import cached_array, write_text

#: The real teachers and the composition teacher, by registry spec.
REAL = ["unirep1900", "unirep256", "unirep64"]
COMPOSITION = "kmer2"
#: Held-out pool proteins in the selector's reward batch (the rest of the held-out part scores).
REWARD_PROTEINS = 32
#: Bumped when a change to the training or scoring code makes earlier results incomparable.
RESULTS_VERSION = 2
SETS = ("real", "junk", "hetero-membrane", "hetero-kingdom")
#: rl variants: name → DistillConfig overrides.
VARIANTS: dict[str, dict[str, Any]] = {
    "rl+contrast": {"selector_reward": "contrast"},
    "rl+align": {"selector_reward": "align"},
    "rl+contrast/state-loss": {"selector_reward": "contrast", "selector_state": "loss"},
    "rl+contrast/state-embedding": {"selector_reward": "contrast",
                                    "selector_state": "embedding"},
    "rl+contrast/warmup-0": {"selector_reward": "contrast", "selector_warmup_steps": 0},
    "rl+contrast/policy-lr-1e-2": {"selector_reward": "contrast", "selector_lr": 1e-2},
    "rl/state-loss": {"selector_state": "loss"},
}


@dataclass
class SelectorStudyConfig(Config):
    """The study's settings (the UniRep preset's training recipe at a smaller pool)."""

    pool: int = option(1200, ge=64, help="pool proteins (training + validation)")
    validation_fraction: float = option(0.2, gt=0.0, lt=0.5, help=(
        "held-out part of the pool: 32 proteins for the selector's reward batch, the rest for "
        "the validation score and the R²"))
    max_len: int = option(256, ge=16, help="pool proteins are truncated to this many residues")
    task_max_len: int = option(512, ge=16, help=(
        "task proteins are embedded at up to this many residues (students: their max_len)"))
    preset: str = option("tiny", choices=("tiny", "small", "paper"), help="student size")
    epochs: int = option(8, ge=1, help="distillation epochs")
    batch_size: int = option(8, ge=2, help="proteins per step")
    lr: float = option(3e-3, gt=0.0, help="student learning rate")
    mlm_weight: float = option(0.1, ge=0.0, help="weight of the MLM loss")
    teachers: str = option(",".join(REAL), help=(
        "the three real teachers (best first), comma-separated registry specs"))
    composition: str = option(COMPOSITION, help="the composition teacher's spec")
    sets: str = option(",".join(SETS), help="teacher sets, comma-separated")
    modes: str = option("rl,uniform,random,single,oracle", help=(
        "modes run on every set (single: one run per teacher)"))
    variants: str = option(",".join(VARIANTS), help="rl variants, comma-separated ('' none)")
    variant_sets: str = option("hetero-membrane", help=(
        "sets the variants run on (rl+contrast runs on every set)"))
    tasks: str = option("localization,membrane,esol", help="probe tasks, comma-separated")
    task_proteins: int = option(800, ge=20, help="proteins per task (seeded subset)")
    folds: int = option(5, ge=2, help="folds per task (homology partitions where present)")
    workdir: str = option("runs/selector-study", help="caches and per-student results")
    results: str = option("benchmarks/results", help="where selector_study.md is written")
    threads: int = option(1, ge=0, help="torch threads (0: torch's default)")
    seed: int = option(0, ge=0, help="seed of the pool, shuffles and students")

    def names(self, field: str) -> list[str]:
        return [x.strip() for x in getattr(self, field).split(",") if x.strip()]

    def validate(self) -> None:
        bad = [s for s in self.names("sets") + self.names("variant_sets") if s not in SETS]
        if bad:
            raise ValueError(f"sets: unknown teacher set {bad[0]!r}; choose from {SETS}")
        bad = [v for v in self.names("variants") if v not in VARIANTS]
        if bad:
            raise ValueError(f"variants: unknown {bad[0]!r}; choose from {sorted(VARIANTS)}")
        if len(self.names("teachers")) != 3:
            raise ValueError("teachers: give exactly three specs (best first)")


@dataclass
class TeacherSet:
    """Targets ``[N, d]`` per teacher (pool order) and ``good [N, K]``: 1 where a teacher is
    known to be good for a protein (what ``oracle`` picks), with the protein groups it uses."""

    name: str
    targets: dict[str, np.ndarray]
    good: np.ndarray
    groups: dict[str, np.ndarray]


@dataclass
class Pool:
    """Pool proteins (training + validation), their metadata and teacher embeddings."""

    ids: np.ndarray
    seqs: list[str]
    membrane: np.ndarray
    kingdom: np.ndarray
    labels: np.ndarray
    val: np.ndarray
    teach: dict[str, np.ndarray]
    digest: str = ""

    @property
    def train(self) -> np.ndarray:
        return np.flatnonzero(~self.val)

    @property
    def reward(self) -> np.ndarray:
        """Held-out proteins of the selector's reward batch (never scored)."""
        return np.flatnonzero(self.val)[:REWARD_PROTEINS]

    @property
    def scored(self) -> np.ndarray:
        """Held-out proteins of the validation score and the R² (not the reward batch)."""
        return np.flatnonzero(self.val)[REWARD_PROTEINS:]


def build_pool(cfg: SelectorStudyConfig, exclude: set[str], cache: Path, log=print) -> Pool:
    """The pool (seeded, task proteins excluded) and its teacher embeddings (cached)."""
    from mtdp.evaluate.pools import distillation_pool, read_deeploc2
    from mtdp.embed import embed_sequences
    from mtdp.models.registry import load_embedder

    df = distillation_pool(cfg.pool, cfg.max_len, cfg.seed, exclude)
    meta = read_deeploc2().drop_duplicates("accession").set_index("accession")
    meta = meta.loc[df.accession]
    seqs = list(df.prepared)
    digest = hashlib.sha256("".join(f">{a}\n{q}\n" for a, q in zip(df.accession, seqs))
                            .encode()).hexdigest()[:12]
    folder = cache / f"pool-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed + 1)
    val = np.zeros(len(seqs), dtype=bool)
    n_val = max(REWARD_PROTEINS + 32, int(round(cfg.validation_fraction * len(seqs))))
    val[rng.permutation(len(seqs))[:n_val]] = True
    teach = {}
    for spec in cfg.names("teachers") + [cfg.composition]:
        path = folder / f"{spec.replace(':', '_').replace('/', '_')}.npy"
        t0, computed = time.perf_counter(), not path.is_file()
        teach[spec] = cached_array(path, lambda: embed_sequences(load_embedder(spec, device="cpu"),
                                                                 seqs))
        if computed:
            log(f"[study] {spec} on the pool: {time.perf_counter() - t0:.0f} s")
    return Pool(np.asarray(df.accession), seqs, meta.membrane.to_numpy(float).astype(bool),
                meta.kingdom.to_numpy(str), meta.label.to_numpy(str), val, teach, digest)


def _shuffled(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows permuted between proteins: a teacher with real-looking features of the wrong
    protein (a derangement, so no protein keeps its own)."""
    order = rng.permutation(len(x))
    src = np.empty(len(x), dtype=np.int64)
    src[order] = np.roll(order, -1)  # each protein takes the next one's, along a random order
    return x[src]


def teacher_sets(cfg: SelectorStudyConfig, pool: Pool) -> dict[str, TeacherSet]:
    """The controlled teacher sets of the module docstring."""
    best, mid, low = cfg.names("teachers")
    t = pool.teach
    rng = np.random.default_rng(cfg.seed + 2)
    n = len(pool.seqs)
    everyone = np.ones(n, dtype=bool)
    out = {"real": TeacherSet("real", {best: t[best], mid: t[mid], low: t[low]},
                              np.ones((n, 3), np.float32), {"all": everyone}),
           "junk": TeacherSet("junk", {best: t[best], cfg.composition: t[cfg.composition],
                                       f"{best}-shuffled": _shuffled(t[best], rng)},
                              np.tile(np.array([1, 0, 0], np.float32), (n, 1)),
                              {"all": everyone})}
    rules = {"hetero-membrane": (pool.membrane, "membrane", "soluble"),
             "hetero-kingdom": (pool.kingdom == "Metazoa", "Metazoa", "other kingdoms")}
    for name, (in_a, a_name, b_name) in rules.items():
        a = np.where(in_a[:, None], t[best], _shuffled(t[best], rng))
        b = np.where(in_a[:, None], _shuffled(t[mid], rng), t[mid])
        out[name] = TeacherSet(name, {f"{best}@{a_name}": a, f"{mid}@{b_name}": b},
                               np.stack([in_a, ~in_a], 1).astype(np.float32),
                               {a_name: in_a, b_name: ~in_a})
    return out


def runs(cfg: SelectorStudyConfig, sets: dict[str, TeacherSet]) -> list[tuple[str, str, dict]]:
    """Every (set, run label, DistillConfig overrides) the study trains."""
    out = []
    variants = cfg.names("variants")
    for name in cfg.names("sets"):
        ts = sets[name]
        for mode in cfg.names("modes"):
            if mode == "single":
                out += [(name, f"single:{k}", {"selector": f"single:{k}"}) for k in ts.targets]
            elif mode == "oracle" and name == "real":
                continue  # every teacher is good for every protein: oracle = uniform
            else:
                out.append((name, mode, {"selector": mode}))
        for v in variants:
            if v == "rl+contrast" or name in cfg.names("variant_sets"):
                out.append((name, v, {"selector": "rl", **VARIANTS[v]}))
    first = cfg.names("sets")[0]
    out.append((first, "none", {"selector": "none"}))
    return out


def train_student(cfg: SelectorStudyConfig, pool: Pool, ts: TeacherSet, overrides: dict):
    """One student (same seed, architecture and steps for every mode); returns the distiller."""
    import torch

    from mtdp.distill import DistillConfig
    from mtdp.distill.batches import GOOD_COLUMN, TeacherStats, make_batch
    from mtdp.distill.core import new_distiller
    from mtdp.distill.local import take_rows, train_epochs

    names = list(ts.targets)
    tr = pool.train
    stats = TeacherStats(names, names, [ts.targets[k].shape[1] for k in names],
                         [torch.tensor(ts.targets[k][tr].mean(0)) for k in names],
                         [torch.tensor(ts.targets[k][tr].std(0)) for k in names])
    dcfg = DistillConfig(**{**dict(data="-", preset=cfg.preset, dropout=0.0, kd_loss="cosine",
                                   lr=cfg.lr, batch_size=cfg.batch_size,
                                   mlm_weight=cfg.mlm_weight, seed=cfg.seed, mlflow=False,
                                   selector_warmup_steps=20), **overrides})
    rows = {"id": pool.ids, "sequence": np.asarray(pool.seqs, dtype=object),
            GOOD_COLUMN: ts.good, **ts.targets}
    steps = cfg.epochs * (len(tr) // cfg.batch_size)
    dist = new_distiller(dcfg, stats, cfg.max_len, steps)
    dist.reward_batch = make_batch(take_rows(rows, pool.reward), stats, mlm_prob=dcfg.mlm_prob,
                                   seed=cfg.seed + 7)
    train_epochs(dist, take_rows(rows, tr), stats, epochs=cfg.epochs,
                 batch_size=cfg.batch_size, seed=cfg.seed)
    return dist, rows, stats


def _settings_key(cfg: SelectorStudyConfig) -> str:
    """What a student's result depends on (not where things go, nor which runs are listed)."""
    from mtdp.selector import CREDIT_MARGIN

    skip = {"workdir", "results", "threads", "sets", "modes", "variants", "variant_sets"}
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    fields.update(version=RESULTS_VERSION, margin=CREDIT_MARGIN)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def _run_file(folder: Path, label: str, overrides: dict) -> Path:
    """A run's result file: its label and a hash of its settings (a changed variant is new)."""
    tag = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:6]
    return folder / f"{label.replace(':', '_').replace('/', '_')}-{tag}.json"


def run_study(cfg: SelectorStudyConfig, log=print) -> Path:
    """The whole study (module docstring); returns the written ``selector_study.md``."""
    import torch

    from mtdp.evaluate.tasks import load_task
    from . import selector_eval as ev
    from .selector_report import write_report

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    work = Path(cfg.workdir)
    tasks = [load_task(t, max_proteins=cfg.task_proteins, seed=42, min_class_count=cfg.folds)
             for t in cfg.names("tasks")]
    exclude = {s for t in tasks for s in t.sequences}  # prepared at 1,000 residues, as the pool
    pool = build_pool(cfg, exclude, work / "cache", log)
    sets = teacher_sets(cfg, pool)
    evaluator = ev.Evaluator(cfg, tasks, pool, work / "cache", log)
    results: dict[str, dict[str, Any]] = {"reference": evaluator.references()}
    plan = runs(cfg, sets)
    out = work / f"results-{_settings_key(cfg)}"
    for i, (set_name, label, overrides) in enumerate(plan):
        path = _run_file(out / set_name, label, overrides)
        if path.is_file():
            res = json.loads(path.read_text())
        else:
            t0 = time.perf_counter()
            dist, rows, stats = train_student(cfg, pool, sets[set_name], overrides)
            res = evaluator.score(dist, rows, stats, sets[set_name])
            res["seconds"] = time.perf_counter() - t0
            write_text(path, json.dumps(res))
        results.setdefault(set_name, {})[label] = res
        log(f"[study] {i + 1}/{len(plan)} {set_name} {label}: "
            + ", ".join(f"{t} {np.mean(v):.3f}" for t, v in res["tasks"].items())
            + f", val {res['val']:.3f} ({res['seconds']:.0f} s)")
    results["random-init"] = {"random-init": evaluator.random_init()}
    return write_report(cfg, results, sets, tasks, time.perf_counter() - t_start)
