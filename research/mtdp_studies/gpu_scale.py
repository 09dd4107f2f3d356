"""The transfer recipe at paper size, in one process on one GPU (the device run).

Why in process: the lent GPU machine is bare and offline, and what can travel to it is capped
at 64 MiB, while Ray's wheel alone is 79 MB. So this run uses the library's pieces without
Ray, MLflow or the store — the pool and its crops (:mod:`mtdp.distill.pool`,
:func:`mtdp.sequences.crop`), the engine's window means (:mod:`mtdp.residue_windows`), the
:class:`~mtdp.distill.core.Distiller` with the recipe's loss (per-window and per-protein MSE
through one shared map, pooled-state standardisation, bf16 on CUDA) driven by
:func:`~mtdp.distill.local.train_token_epochs` — and writes what is small enough to come back
(tables, float16 students). On a Ray cluster the same work is ``jobs/distill.py --config
jobs/configs/unirep-cpu.yaml``.

Stages, each timed as it ends: tasks, pool (crops), teacher labels (h_avg and window means),
one student per preset × mode, task embeddings, linear probes on the tasks' homology folds
with the gain capture over composition, R² to the reference teacher, the table. Arrays are
cached under ``workdir`` (a rerun redoes only what is missing).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtdp.config import Config, option
from mtdp.io import cached_array, write_text

#: A middle size between the CPU student and the paper's (d 384, 6 layers).
MID = dict(preset="paper", d_model=384, num_heads=6, d_ff=1536, embed_dim=512)


@dataclass
class GpuScaleConfig(Config):
    """Settings of the run; the defaults are the GPU plan (≤ 8 minutes on an H100/H200,
    estimated, not yet measured)."""

    pool: int = option(24000, ge=16, help="Swiss-Prot pool proteins (first N, seeded order)")
    pool_fasta: str = option("", help=(
        "the pool already in its seeded order (benchmarks/device_pack.py writes it: the whole "
        "pool cannot travel); default: the shared pool"))
    max_len: int = option(512, ge=16, help="crop length of the pool's proteins")
    window: int = option(8, ge=1, help="residues per stored window mean")
    teachers: str = option("unirep1900,unirep256", help=(
        "teacher specs, the reference first (any spec with per-residue states)"))
    students: str = option("paper,mid", help="student sizes: presets, or mid (d 384 x 6)")
    modes: str = option("uniform,single:unirep1900", help="selector modes (the ablation)")
    epochs: int = option(3, ge=1, help="distillation epochs")
    batch_tokens: int = option(65536, ge=256, help="padded tokens per training step")
    lr: float = option(1e-3, gt=0.0, help="student learning rate")
    tasks: str = option("membrane,localization,go,esol,deepsol", help="probe tasks")
    task_proteins: int = option(3000, ge=20, help="proteins per task (seeded subset)")
    folds: int = option(5, ge=2, help="folds per task (homology partitions where present)")
    embed_tokens: int = option(0, ge=0, help="padded tokens per embedding batch (0: default)")
    device: str = option("auto", help="auto (cuda if present), cuda or cpu")
    workdir: str = option("runs/gpu-scale", help="caches, students and results")
    seed: int = option(0, ge=0, help="seed of the pool and the students")

    def names(self, field: str) -> list[str]:
        return [x.strip() for x in getattr(self, field).split(",") if x.strip()]


class Stages:
    """Wall time per stage, printed as it ends and kept for the table."""

    def __init__(self, log=print) -> None:
        self.times: dict[str, float] = {}
        self.log = log

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - t0
        self.log(f"[gpu-scale] {name}: {self.times[name]:.1f} s")
        return out


def _embed_cached(path: Path, spec_or_embedder, seqs: list[str], device, tokens: int):
    from mtdp.embed import embed_sequences
    from mtdp.models.registry import load_embedder

    def compute() -> np.ndarray:
        emb = load_embedder(spec_or_embedder, device=device) \
            if isinstance(spec_or_embedder, str) else spec_or_embedder
        return embed_sequences(emb, seqs, batch_tokens=tokens or None).astype(np.float16)
    return cached_array(path, compute).astype(np.float32)


def pool_crops(cfg: GpuScaleConfig, work: Path) -> tuple[list[str], list[str]]:
    """The pool's first ``cfg.pool`` proteins, each cut to one crop (the recipe's rule)."""
    from mtdp.distill.pool import write_pool
    from mtdp.sequences import crop, prepare, read_fasta

    if cfg.pool_fasta:
        recs = read_fasta(cfg.pool_fasta)[:cfg.pool]
    else:
        recs = read_fasta(write_pool(cfg.pool, cfg.seed, work / "pool.fasta")[0])
    return [r.id for r in recs], [crop(prepare(r.sequence, max_len=None), cfg.max_len, r.id)
                                  for r in recs]


def label(spec: str, seqs: list[str], cfg: GpuScaleConfig, device, path: Path):
    """A teacher's h_avg ``[N, D]`` and window means (one ``[n_i, D]`` array each), float16,
    cached as one ``.npz``."""
    from mtdp.embed import embed_sequences
    from mtdp.models.registry import load_embedder

    if not path.is_file():
        emb, win = embed_sequences(load_embedder(spec, device=device), seqs, per_residue=True,
                                   residue_window=cfg.window)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, h=emb.astype(np.float16), w=np.concatenate(win).astype(np.float16),
                 n=np.array([len(w) for w in win]))
    with np.load(path) as z:
        h, flat, n = z["h"], z["w"], z["n"]
    off = np.concatenate([[0], np.cumsum(n)])
    win = np.empty(len(n), dtype=object)
    win[:] = [flat[off[i]:off[i + 1]] for i in range(len(n))]
    return h, win


def _stats(names: list[str], labels: dict, train: np.ndarray, window: int, device):
    """Teacher statistics over the training proteins (windows: over their windows)."""
    import torch

    from mtdp.distill.batches import ResidueStats, TeacherStats
    from mtdp.teacher_data import residue_column, teacher_column

    def t(x):
        return torch.tensor(np.asarray(x, dtype=np.float32))

    hs = [labels[k][0][train].astype(np.float64) for k in names]
    stats = TeacherStats(names, [teacher_column(k) for k in names], [h.shape[1] for h in hs],
                         [t(h.mean(0)) for h in hs], [t(h.std(0)) for h in hs])
    for k in names:
        w = np.concatenate(list(labels[k][1][train])).astype(np.float64)
        stats.residues[k] = ResidueStats(residue_column(k), t(w.mean(0)), t(w.std(0)), window)
    return stats.to(device)


def _student_config(cfg: GpuScaleConfig, size: str, mode: str):
    from mtdp.distill import DistillConfig

    arch = MID if size == "mid" else {"preset": size}
    return DistillConfig(data="-", **arch, dropout=0.0, kd_loss="mse", kd_input="clean",
                         mlm_weight=0.0, residue_head="shared", pool_norm=True, lr=cfg.lr,
                         warmup_ratio=0.05, schedule="cosine", selector=mode,
                         residue_teachers=cfg.names("teachers"), max_len=1000,
                         precision="auto", seed=cfg.seed, mlflow=False)


def students(cfg: GpuScaleConfig, ids: list[str], seqs: list[str], labels: dict, device,
             stages: Stages, work: Path) -> dict[str, object]:
    """One student per size × mode on 95 % of the pool; saved in float16 (they come back)."""
    import torch

    from mtdp.distill.core import new_distiller
    from mtdp.distill.local import take_rows, token_batches, train_token_epochs
    from mtdp.models.student import StudentEmbedder, load_student

    names = cfg.names("teachers")
    train = np.random.default_rng(cfg.seed + 1).permutation(len(seqs))[:max(2, len(seqs) * 19
                                                                               // 20)]
    stats = _stats(names, labels, train, cfg.window, device)
    rows = {"id": np.asarray(ids, dtype=object), "sequence": np.asarray(seqs, dtype=object)}
    for k, col, rs in zip(names, stats.columns, [stats.residues[k] for k in names]):
        rows[col], rows[rs.column] = labels[k]
    train_rows = take_rows(rows, train)
    lengths = np.array([len(s) for s in train_rows["sequence"]])
    steps = cfg.epochs * len(token_batches(lengths, cfg.batch_tokens, 0))
    out = {}
    for size in cfg.names("students"):
        for mode in cfg.names("modes"):
            tag = f"{size}-{mode.replace(':', '-')}"
            folder = work / "students" / tag
            if not (folder / "config.json").is_file():
                dist = new_distiller(_student_config(cfg, size, mode), stats, cfg.max_len,
                                     steps, device=device)
                stages.run(f"distil {tag} ({steps} steps)", train_token_epochs, dist,
                           train_rows, stats, epochs=cfg.epochs, batch_tokens=cfg.batch_tokens,
                           seed=cfg.seed)
                dist.student.fold_pool_norm().save(folder, dtype=torch.float16)
            model = load_student(folder, map_location=device).to(device)
            out[f"student-{tag}"] = StudentEmbedder(model, name=f"student-{tag}")
    return out


def _random_init(cfg: GpuScaleConfig, dims: dict[str, int], size: str, device):
    """The start point of the ``size`` students (same seed and builder), untrained."""
    from mtdp.distill.batches import TeacherStats
    from mtdp.distill.core import build_student
    from mtdp.models.student import StudentEmbedder

    model = build_student(_student_config(cfg, size, "uniform"),
                          TeacherStats.placeholder(dims), cfg.max_len).to(device)
    return StudentEmbedder(model.eval(), name=f"random-init-{size}")


def run_gpu_scale(cfg: GpuScaleConfig, log=print) -> Path:
    """The whole run (module docstring); returns the written table."""
    import torch

    from mtdp.evaluate.tasks import load_task
    from mtdp.models.baselines import load_baseline

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    work = Path(cfg.workdir)
    cache = work / f"run-{_settings_key(cfg)}"  # other settings never reuse these caches
    stages = Stages(log)
    tasks = stages.run("tasks", lambda: [load_task(t, max_proteins=cfg.task_proteins, seed=42,
                                                   min_class_count=cfg.folds)
                                         for t in cfg.names("tasks")])
    ids, seqs = stages.run("pool", pool_crops, cfg, cache)
    log(f"[gpu-scale] pool {len(seqs)} crops, {sum(map(len, seqs)):,} residues; device "
        f"{device}")
    teachers = cfg.names("teachers")
    labels = {t: stages.run(f"label {t}", label, t, seqs, cfg, device,
                            cache / "labels" / f"{t}.npz") for t in teachers}
    models: dict[str, object] = {t: t for t in teachers}
    models.update(students(cfg, ids, seqs, labels, device, stages, cache))
    dims = {t: labels[t][0].shape[1] for t in teachers}
    for size in cfg.names("students"):
        models[f"random-init-{size}"] = _random_init(cfg, dims, size, device)
    models["aac"] = load_baseline("aac")
    emb = {(name, t.name): stages.run(f"embed tasks: {name} × {t.name}", _embed_cached,
                                      cache / "tasks" / f"{name.replace(':', '-')}-{t.name}.npy",
                                      model, t.sequences, device, cfg.embed_tokens)
           for name, model in models.items() for t in tasks}
    scores = stages.run("probes", _probe, tasks, emb, cfg)
    return _write(cfg, scores, emb, tasks, stages, len(seqs), device, work)


def _settings_key(cfg: GpuScaleConfig) -> str:
    """What the pool, students and embeddings depend on (not where they go or run)."""
    import dataclasses
    import hashlib

    fields = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in ("workdir", "device", "embed_tokens", "pool_fasta")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def _probe(tasks, emb: dict[tuple[str, str], np.ndarray], cfg: GpuScaleConfig
           ) -> dict[str, dict[str, list[float]]]:
    """Linear probes of every (model, task) on the task's homology folds, one process per
    core (scikit-learn fits are single-threaded for the most part)."""
    from joblib import Parallel, delayed

    from mtdp.evaluate.probes import task_folds
    from .selector_eval import linear_fold_scores

    by_name = {t.name: t for t in tasks}
    folds = {t.name: task_folds(t, "homology", cfg.folds, 42)[0] for t in tasks}
    keys = list(emb)
    out = Parallel(n_jobs=-1)(delayed(linear_fold_scores)(emb[k], by_name[k[1]], folds[k[1]])
                              for k in keys)
    scores: dict[str, dict[str, list[float]]] = {}
    for (model, task), s in zip(keys, out):
        scores.setdefault(model, {})[task] = s
    return scores


def _write(cfg: GpuScaleConfig, scores: dict, emb: dict, tasks, stages: Stages, n_pool: int,
           device, work: Path) -> Path:
    """``gpu_scale.md`` + ``gpu_scale.json`` in ``workdir`` (small: they come back)."""
    from mtdp.evaluate.transfer import gain_capture, ratio, ridge_r2

    names, best = [t.name for t in tasks], cfg.names("teachers")[0]
    lines = ["# The transfer recipe at paper size, in process", "",
             f"Pool {n_pool} Swiss-Prot crops ≤ {cfg.max_len} aa, teachers {cfg.teachers} "
             f"(window means of {cfg.window}), {cfg.epochs} epochs × {cfg.batch_tokens} tokens "
             f"per step, device `{device}`; tasks: {cfg.task_proteins} proteins, {cfg.folds} "
             "homology folds, linear probes. Each cell: score (ratio to the reference teacher "
             "· gain capture over aac ± SE).", "",
             "| model | " + " | ".join(f"{t.name} ({t.primary_metric})" for t in tasks)
             + " |", "|---|" + "---:|" * len(tasks)]
    for name, s in scores.items():
        cells = []
        for t in names:
            gc, se = gain_capture(s[t], scores[best][t], scores["aac"][t])
            cells.append(f"{np.mean(s[t]):.3f}" + ("" if name in (best, "aac") else
                                                    f" ({ratio(s[t], scores[best][t]):.3f} · "
                                                    f"{gc:.2f} ± {se:.2f})"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    big = max(tasks, key=len)
    y = emb[(best, big.name)]
    lines += ["", f"Ridge R² of {best} from each model ({len(big)} {big.name} proteins; the "
              "teacher's own row is the ceiling): " + ", ".join(
                  f"{m} {ridge_r2(emb[(m, big.name)], y):.3f}" for m in scores)]
    lines += ["", "Stage wall times (s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in stages.times.items() if not k.startswith("embed tasks"))
        + f"; task embeddings {sum(v for k, v in stages.times.items() if 'embed' in k):.1f}."]
    write_text(work / "gpu_scale.json", json.dumps({"scores": scores, "stages": stages.times}))
    return write_text(work / "gpu_scale.md", "\n".join(lines) + "\n")
