"""Does the teacher selector earn its place on a student that learns? (issue 41)

The selector study on the transfer recipe (:mod:`.transfer_arms`: per-residue window targets,
a head shared by window and protein targets, MSE, clean input, no MLM):

1. **pool**: DeepLoc 2.0 partitions 0-3 (no task protein), proteins of at least ``crop``
   residues cut to their first ``crop`` — every protein the same length, so another protein's
   per-residue targets fit it — ``train`` for training, ``heldout`` kept out: the first
   :data:`CREDIT_PROTEINS` give the selector its held-out credit / reward, the rest score R²;
2. **labels**: UniRep-1900 and UniRep-256 per-protein ``h_avg`` and window means (w = 8),
   through ``mtdp.precompute`` (cached in ``workdir``);
3. **teacher sets** built from them (a teacher gives the protein's own targets where it is
   "good", another protein's — targets *and* windows, a derangement — elsewhere):
   ``real`` (both UniReps), ``junk`` (UniRep-1900, amino-acid composition, UniRep-1900
   shuffled), ``hetero-membrane`` (UniRep-1900 good for membrane proteins, UniRep-256 for
   soluble ones) and ``hetero-kingdom`` (Metazoa vs the other kingdoms), by a rule the
   selector is never shown;
4. **students**, in the order of ``plan`` (the most telling first): the same student, seed,
   data order (one pass over the training proteins) and steps; only the selection differs —
   ``uniform``, ``oracle`` (the known-good teachers), ``rl`` (held-out reward), ``rl+contrast``
   (per-protein credit on held-out proteins), ``rl+contrast/batch`` (credit on the training
   batch, the old rule), ``random``, ``single`` (one run per teacher);
5. **scores** (:mod:`.selector_eval`): linear probes on the tasks' homology folds (the same
   folds for every student: paired), gain capture over composition, UniRep-1900 R² per group,
   selection rates per group; the table (:mod:`.selector_report`).

Each student's result is kept as JSON, so a rerun does only what is missing; ``max_minutes``
stops starting new students and writes the table of what is done.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtdp.config import Config, option
from mtdp.io import write_text

#: The two real teachers (best first), by registry spec.
TEACHERS = ("unirep1900", "unirep256")
WINDOW = 8
#: Held-out proteins giving the selector its credit (contrast) and reward (heldout).
CREDIT_PROTEINS = 200
SETS = ("real", "junk", "hetero-membrane", "hetero-kingdom")
MODES = ("uniform", "oracle", "rl", "rl+contrast", "rl+contrast/batch", "random", "single")
#: Bumped when a change to training or scoring makes earlier results incomparable.
RESULTS_VERSION = 3
PLAN = ("hetero-membrane/uniform", "hetero-membrane/oracle", "hetero-membrane/rl+contrast",
        "hetero-membrane/rl", "hetero-kingdom/uniform", "hetero-kingdom/oracle",
        "hetero-kingdom/rl+contrast", "hetero-kingdom/rl", "junk/rl+contrast", "junk/uniform",
        "junk/oracle", "junk/rl", "hetero-membrane/random", "hetero-kingdom/random",
        "real/uniform", "real/rl+contrast", "junk/rl+contrast/batch", "hetero-membrane/single",
        "hetero-kingdom/single", "real/rl", "real/single", "junk/random")


@dataclass
class SelectorStudyConfig(Config):
    """The study's settings."""

    train: int = option(3200, ge=64, help="training proteins")
    heldout: int = option(600, ge=CREDIT_PROTEINS + 64, help=(
        f"held-out pool proteins: the first {CREDIT_PROTEINS} give the selector its credit, "
        "the rest score R² and the selection rates"))
    crop: int = option(256, ge=32, help=(
        "pool proteins of at least this many residues, cut to it (a multiple of 8)"))
    steps: int = option(1600, ge=1, help=(
        "optimiser steps per student (1,600 × 8: four passes over the training proteins)"))
    batch_size: int = option(8, ge=2, help="proteins per step")
    lr: float = option(3e-3, gt=0.0, help="student learning rate")
    teachers: str = option(",".join(TEACHERS), help=(
        "the two real teachers (best first; the first is the reference of R² and gain "
        "capture), registry specs with per-residue states"))
    tasks: str = option("localization,membrane,go,esol", help="probe tasks")
    task_proteins: int = option(3000, ge=20, help="proteins per task (seeded subset)")
    task_max_len: int = option(512, ge=32, help="students embed task proteins up to this")
    folds: int = option(5, ge=2, help="folds per task (homology partitions where present)")
    plan: str = option(",".join(PLAN), help="set/mode runs, in order")
    max_minutes: float = option(0.0, ge=0.0, help=(
        "start no new student after this many minutes (0: no limit)"))
    workdir: str = option("runs/selector-study", help="labels, caches, per-student results")
    reference_store: str = option("runs/embedding-store", help=(
        "embedding store of the references' task vectors (tune/benchmark.py's, shared)"))
    results: str = option("docs/results/selector-study-tables.md", help="the table written")
    seed: int = option(0, ge=0, help="seed of the pool, shuffles and students")

    def runs(self) -> list[tuple[str, str]]:
        """``(set, mode)`` pairs of :attr:`plan` (validated)."""
        out = []
        for item in (x.strip() for x in self.plan.split(",") if x.strip()):
            name, _, mode = item.partition("/")
            if name not in SETS or mode not in MODES:
                raise ValueError(f"plan: {item!r} is not SET/MODE with SET in {SETS} and MODE "
                                 f"in {MODES}")
            out.append((name, mode))
        return out

    @property
    def teacher_names(self) -> list[str]:
        return [x.strip() for x in self.teachers.split(",") if x.strip()]

    def validate(self) -> None:
        self.runs()
        if len(self.teacher_names) != 2:
            raise ValueError(f"teachers: give two specs (best first), got {self.teachers!r}")
        if self.crop % WINDOW:
            raise ValueError(f"crop {self.crop} must be a multiple of the window {WINDOW}")


@dataclass
class Pool:
    """The labelled pool: ids, sequences, groups and the real teachers' targets."""

    ids: np.ndarray
    seqs: np.ndarray
    membrane: np.ndarray
    metazoa: np.ndarray
    split: np.ndarray  # "train" / "credit" / "scored"
    protein: dict[str, np.ndarray]   # teacher → [N, d] h_avg
    windows: dict[str, np.ndarray]   # teacher → [N, crop / 8, d] float16

    def where(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def label_pool(cfg: SelectorStudyConfig, exclude: set[str], log=print) -> Path:
    """Write the pool FASTA and label it with both UniReps (resumable); returns the dataset."""
    from mtdp.evaluate.pools import distillation_pool
    from mtdp.precompute import PrecomputeConfig, run_precompute
    from mtdp.sequences import write_fasta

    work = Path(cfg.workdir)
    out = work / f"teachers-{cfg.train}-{cfg.heldout}-{cfg.crop}-{cfg.seed}"
    fasta = out.with_suffix(".fasta")
    if not fasta.is_file():
        df = distillation_pool(0, 100_000, cfg.seed, exclude)
        df = df[df.prepared.str.len() >= cfg.crop].head(cfg.train + cfg.heldout)
        if len(df) < cfg.train + cfg.heldout:
            raise ValueError(f"only {len(df)} pool proteins of >= {cfg.crop} residues")
        work.mkdir(parents=True, exist_ok=True)
        write_fasta([(a, s[:cfg.crop]) for a, s in zip(df.accession, df.prepared)], fasta)
    t0 = time.perf_counter()
    man = run_precompute(PrecomputeConfig(
        inputs=[str(fasta)], teachers=cfg.teacher_names, per_residue=cfg.teacher_names,
        residue_window=WINDOW, max_len=cfg.crop, store=str(work / "store"), output=str(out),
        validation_fraction=0.0, track=False))
    log(f"[study] labels: {man.rows:,} proteins ({time.perf_counter() - t0:.0f} s)")
    return out


def load_pool(cfg: SelectorStudyConfig, run: Path) -> Pool:
    """The labelled pool in memory, in FASTA order, with its groups and splits."""
    from mtdp.evaluate.pools import read_deeploc2
    from mtdp.sequences import read_fasta
    from mtdp_studies.transfer_arms import read_rows

    rows, man = read_rows(run)
    order = {r.id: i for i, r in enumerate(read_fasta(run.with_suffix(".fasta")))}
    idx = np.argsort([order[str(a)] for a in rows["id"]])
    meta = read_deeploc2().drop_duplicates("accession").set_index("accession")
    meta = meta.loc[[str(a) for a in rows["id"][idx]]]
    n = len(idx)  # precompute keeps one row per distinct sequence
    split = np.array(["train"] * (n - cfg.heldout) + ["credit"] * CREDIT_PROTEINS
                     + ["scored"] * (cfg.heldout - CREDIT_PROTEINS))
    protein, windows = {}, {}
    for t in cfg.teacher_names:
        e = man.teacher(t)
        protein[t] = rows[e.column][idx].astype(np.float32)
        windows[t] = np.stack(list(rows[e.residue_column][idx]))
    return Pool(rows["id"][idx], rows["sequence"][idx],
                meta.membrane.to_numpy(float).astype(bool),
                (meta.kingdom == "Metazoa").to_numpy(), split, protein, windows)


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation with no fixed point (each protein takes the next one's, in a random
    order)."""
    order = rng.permutation(n)
    src = np.empty(n, dtype=np.int64)
    src[order] = np.roll(order, -1)
    return src


def composition(seqs: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Amino-acid composition per protein ``[N, 20]`` and per window of 8 ``[N, crop/8, 20]``
    (the composition teacher of ``junk``)."""
    alphabet = "ACDEFGHIKLMNPQRSTVWY"
    lut = np.full(128, -1)
    lut[[ord(c) for c in alphabet]] = np.arange(20)
    codes = lut[np.array([[ord(c) for c in s[:crop]] for s in seqs])]
    onehot = (codes[..., None] == np.arange(20)).astype(np.float32)
    win = onehot.reshape(len(seqs), crop // WINDOW, WINDOW, 20).mean(2)
    return onehot.mean(1), win.astype(np.float16)


@dataclass
class TeacherSet:
    """Per teacher its targets (protein ``[N, d]``, windows ``[N, W, d]``), ``good [N, K]``
    (what ``oracle`` picks) and the protein groups it is built on."""

    name: str
    protein: dict[str, np.ndarray]
    windows: dict[str, np.ndarray]
    good: np.ndarray
    groups: dict[str, np.ndarray]


def teacher_sets(cfg: SelectorStudyConfig, pool: Pool) -> dict[str, TeacherSet]:
    """The controlled sets of the module docstring."""
    best, mid = cfg.teacher_names
    rng = np.random.default_rng(cfg.seed + 2)
    n = len(pool.ids)
    p, w = pool.protein, pool.windows
    allp = {"all": np.ones(n, dtype=bool)}
    out = {"real": TeacherSet("real", dict(p), dict(w), np.ones((n, 2), np.float32), allp)}
    src = _derangement(n, rng)
    cp, cw = composition(pool.seqs, cfg.crop)
    out["junk"] = TeacherSet(
        "junk", {best: p[best], "composition": cp, f"{best}-shuffled": p[best][src]},
        {best: w[best], "composition": cw, f"{best}-shuffled": w[best][src]},
        np.tile(np.array([1, 0, 0], np.float32), (n, 1)), allp)
    for name, in_a, a, b in (("hetero-membrane", pool.membrane, "membrane", "soluble"),
                             ("hetero-kingdom", pool.metazoa, "Metazoa", "other")):
        sa, sb = _derangement(n, rng), _derangement(n, rng)
        protein, windows = {}, {}
        for teacher, group, own, shuffle in ((best, a, in_a, sa), (mid, b, ~in_a, sb)):
            key = f"{teacher}@{group}"
            protein[key] = np.where(own[:, None], p[teacher], p[teacher][shuffle])
            windows[key] = np.where(own[:, None, None], w[teacher], w[teacher][shuffle])
        out[name] = TeacherSet(name, protein, windows,
                               np.stack([in_a, ~in_a], 1).astype(np.float32),
                               {a: in_a, b: ~in_a})
    return out


def mode_overrides(mode: str, teacher: str | None = None) -> dict[str, Any]:
    """DistillConfig fields of a study mode."""
    if mode == "single":
        return {"selector": f"single:{teacher}"}
    if mode.startswith("rl+contrast"):
        return {"selector": "rl", "selector_reward": "contrast",
                "selector_credit": "batch" if mode.endswith("/batch") else "heldout"}
    return {"selector": mode}


def expand(cfg: SelectorStudyConfig, sets: dict[str, TeacherSet]
           ) -> list[tuple[str, str, dict[str, Any]]]:
    """``(set, run label, overrides)`` of every student in plan order (``single``: one per
    teacher)."""
    out = []
    for name, mode in cfg.runs():
        if mode == "single":
            out += [(name, f"single:{k}", mode_overrides(mode, k)) for k in sets[name].protein]
        else:
            out.append((name, mode, mode_overrides(mode)))
    return out


def run_study(cfg: SelectorStudyConfig, log=print) -> Path:
    """The whole study (module docstring); returns the written table."""
    from . import selector_eval as ev

    cfg.validate()
    t_start = time.perf_counter()
    tasks = ev.load_tasks(cfg)
    exclude = {s for t in tasks for s in t.sequences}
    pool = load_pool(cfg, label_pool(cfg, exclude, log))
    return study(cfg, tasks, pool, log, t_start)


def study(cfg: SelectorStudyConfig, tasks: list, pool: Pool, log=print,
          t_start: float | None = None) -> Path:
    """Students of the plan on a labelled ``pool``, scored on ``tasks``; writes the table."""
    import torch

    from . import selector_eval as ev
    from .selector_report import write_report
    from .selector_train import train_student

    torch.set_num_threads(2)
    t_start = time.perf_counter() if t_start is None else t_start
    sets = teacher_sets(cfg, pool)
    evaluator = ev.Evaluator(cfg, tasks, pool, log)
    results: dict[str, dict[str, Any]] = {"reference": evaluator.references()}
    out = Path(cfg.workdir) / f"results-{_settings_key(cfg)}"
    plan = expand(cfg, sets)
    for i, (set_name, label, overrides) in enumerate(plan):
        path = out / set_name / f"{label.replace(':', '_').replace('/', '_')}.json"
        if path.is_file():
            res = json.loads(path.read_text())
        elif cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes:
            log(f"[study] {cfg.max_minutes:g} min reached: {set_name} {label} not run")
            continue
        else:
            t0 = time.perf_counter()
            dist, stats, rows = train_student(cfg, pool, sets[set_name], overrides, log)
            res = evaluator.score(dist, stats, rows, sets[set_name])
            res["seconds"] = time.perf_counter() - t0
            write_text(path, json.dumps(res))
        results.setdefault(set_name, {})[label] = res
        log(f"[study] {i + 1}/{len(plan)} {set_name} {label}: " + ", ".join(
            f"{t} {np.mean(v):.3f}" for t, v in res["tasks"].items())
            + f" ({res['seconds']:.0f} s)")
    results["random-init"] = {"random-init": evaluator.random_init()}
    return write_report(cfg, results, sets, tasks, time.perf_counter() - t_start)


def _settings_key(cfg: SelectorStudyConfig) -> str:
    """What a student's result depends on (not where things go, nor the plan)."""
    import dataclasses

    skip = {"workdir", "results", "plan", "max_minutes", "reference_store"}
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    fields["version"] = RESULTS_VERSION
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
