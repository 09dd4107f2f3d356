"""The UniRep distillation at paper size, in one process on one GPU (issue 19's ``gpu`` scale).

Why in process: the lent GPU machine is bare and offline, and what can travel to it is capped
at 64 MiB, while Ray's wheel alone is 79 MB (LanceDB's 54 MB, pylance's 85 MB). So this run
uses the library's pieces without Ray, MLflow or the store — the embedding engine
(token-budget, length-sorted batches), the :class:`~mtdp.distill.core.Distiller` (bf16
autocast on CUDA) driven by :func:`~mtdp.distill.local.train_token_epochs`, the UniRep
teachers — and writes everything small enough to come back. On a Ray cluster the same work is
``unirep_preset.py`` (Ray Data precompute, Ray Train DDP, Tune probes).

Stages, each timed and printed: tasks + pool (every DeepLoc 2.0 protein of partitions 0-3 not
in a task subset, ``max_len`` 1,000), teacher embeddings of the pool, one ``paper`` student per
mode, task embeddings of teachers / students / floors, linear probes on the tasks' homology
folds (:func:`.selector_eval.linear_fold_scores`), the table. Embeddings are cached as
``.npy`` under ``workdir`` (a rerun redoes only what is missing).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config, option
from ..io import cached_array, write_text



@dataclass
class GpuScaleConfig(Config):
    """Settings of the run; the defaults are the GPU plan, estimated (not yet measured) at
    ≈ 6 minutes on an H100/H200: UniRep on the pool ~20 s, 4 students × 6 epochs ~2.5 min,
    task embeddings ~30 s, probes on 16 cores ~1 min."""

    pool: int = option(0, ge=0, help="pool proteins (0: every eligible one, ~22,000)")
    max_len: int = option(1000, ge=16, help="pool proteins are truncated to this")
    preset: str = option("paper", choices=("tiny", "small", "paper"), help="student size")
    epochs: int = option(6, ge=1, help="distillation epochs")
    batch_tokens: int = option(65536, ge=256, help="padded tokens per training step")
    lr: float = option(1e-3, gt=0.0, help="student learning rate")
    mlm_weight: float = option(0.1, ge=0.0, help="weight of the MLM loss")
    teachers: str = option("unirep1900,unirep256", help=(
        "teacher specs, the reference first (any registry spec; tests use baselines)"))
    modes: str = option("rl,uniform,single:unirep1900,none", help="selector modes")
    tasks: str = option("membrane,localization,meltome,esol,deepsol", help="probe tasks")
    task_proteins: int = option(2000, ge=20, help="proteins per task (seeded subset)")
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
    from ..embed import embed_sequences
    from ..models.registry import load_embedder

    def compute() -> np.ndarray:
        emb = load_embedder(spec_or_embedder, device=device) \
            if isinstance(spec_or_embedder, str) else spec_or_embedder
        return embed_sequences(emb, seqs, batch_tokens=tokens or None).astype(np.float16)
    return cached_array(path, compute).astype(np.float32)


def _students(cfg: GpuScaleConfig, df, teach: dict[str, np.ndarray], device, stages: Stages,
              work: Path) -> dict[str, object]:
    """One ``paper`` student per mode on 90 % of the pool (32 of the other proteins are the
    selector's reward batch)."""
    import torch

    from ..distill import DistillConfig
    from ..distill.batches import TeacherStats, make_batch
    from ..distill.core import new_distiller
    from ..distill.local import take_rows, token_batches, train_token_epochs
    from ..models.student import StudentEmbedder, load_student

    n = len(df)
    val = np.zeros(n, dtype=bool)
    val[np.random.default_rng(cfg.seed + 1).permutation(n)[:max(32, n // 10)]] = True
    tr = np.flatnonzero(~val)
    rows = {"id": df.accession.to_numpy(), "sequence": df.prepared.to_numpy(dtype=object),
            **teach}
    names = list(teach)
    stats = TeacherStats(names, names, [teach[k].shape[1] for k in names],
                         [torch.tensor(teach[k][tr].mean(0)) for k in names],
                         [torch.tensor(teach[k][tr].std(0)) for k in names]).to(device)
    train_rows = take_rows(rows, tr)
    lengths = np.array([len(s) for s in train_rows["sequence"]])
    steps = cfg.epochs * len(token_batches(lengths, cfg.batch_tokens, 0))
    out = {}
    for mode in cfg.names("modes"):
        folder = work / "students" / mode.replace(":", "-")
        if not (folder / "config.json").is_file():
            dcfg = DistillConfig(data="-", preset=cfg.preset, dropout=0.0, kd_loss="cosine",
                                 lr=cfg.lr, mlm_weight=cfg.mlm_weight, selector=mode,
                                 seed=cfg.seed, mlflow=False, selector_warmup_steps=20)
            dist = new_distiller(dcfg, stats, cfg.max_len, steps, device=device)
            dist.reward_batch = make_batch(take_rows(rows, np.flatnonzero(val)[:32]), stats,
                                           mlm_prob=dcfg.mlm_prob, seed=cfg.seed + 7,
                                           device=device)
            stages.run(f"distil {mode} ({steps} steps)", train_token_epochs, dist, train_rows,
                       stats, epochs=cfg.epochs, batch_tokens=cfg.batch_tokens, seed=cfg.seed)
            dist.student.save(folder)
        model = load_student(folder, map_location=device).to(device)
        out[f"student-{mode}"] = StudentEmbedder(model, name=f"student-{mode}")
    return out


def run_gpu_scale(cfg: GpuScaleConfig, log=print) -> Path:
    """The whole run (module docstring); returns the written table."""
    import torch

    from ..benchmarks.pools import distillation_pool
    from ..benchmarks.tasks import load_task
    from ..models.baselines import load_baseline

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    work = Path(cfg.workdir)
    cache = work / f"run-{_settings_key(cfg)}"  # other settings never reuse these caches
    stages = Stages(log)
    tasks = stages.run("tasks", lambda: [load_task(t, max_proteins=cfg.task_proteins, seed=42,
                                                   min_class_count=cfg.folds)
                                         for t in cfg.names("tasks")])
    exclude = {s for t in tasks for s in t.sequences}
    df = stages.run("pool", distillation_pool, cfg.pool, cfg.max_len, cfg.seed, exclude)
    log(f"[gpu-scale] pool {len(df)} proteins, {int(df.prepared.str.len().sum()):,} residues; "
        f"device {device}")
    seqs = list(df.prepared)
    teachers = cfg.names("teachers")
    teach = {t: stages.run(f"{t} on the pool", _embed_cached,
                           cache / "pool" / f"{t}.npy", t, seqs, device,
                           cfg.embed_tokens) for t in teachers}
    models: dict[str, object] = {t: t for t in teachers}
    models.update(_students(cfg, df, teach, device, stages, cache))
    models["random-init"] = _random_init(cfg, {t: x.shape[1] for t, x in teach.items()}, device)
    models["kmer2"] = load_baseline("kmer2")
    models["aac"] = load_baseline("aac")
    emb = {(name, t.name): stages.run(f"embed tasks: {name} × {t.name}", _embed_cached,
                                      cache / "tasks" / f"{name.replace(':', '-')}-{t.name}.npy",
                                      model, t.sequences, device, cfg.embed_tokens)
           for name, model in models.items() for t in tasks}
    scores = stages.run("probes", _probe, tasks, emb, cfg)
    return _write(cfg, scores, tasks, stages, len(df), device, work)


def _settings_key(cfg: GpuScaleConfig) -> str:
    """What the pool, students and embeddings depend on (not where they go or run)."""
    import dataclasses
    import hashlib

    fields = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in ("workdir", "device", "embed_tokens")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def _random_init(cfg: GpuScaleConfig, dims: dict[str, int], device):
    """The start point of every student (same seed and builder), untrained."""
    from ..distill import DistillConfig
    from ..distill.batches import TeacherStats
    from ..distill.core import build_student
    from ..models.student import StudentEmbedder

    model = build_student(DistillConfig(data="-", preset=cfg.preset, dropout=0.0,
                                        seed=cfg.seed), TeacherStats.placeholder(dims),
                          cfg.max_len).to(device)
    return StudentEmbedder(model.eval(), name="random-init")


def _probe(tasks, emb: dict[tuple[str, str], np.ndarray], cfg: GpuScaleConfig
           ) -> dict[str, dict[str, list[float]]]:
    """Linear probes of every (model, task) on the task's homology folds, one process per
    core (scikit-learn fits are single-threaded for the most part)."""
    from joblib import Parallel, delayed

    from ..benchmarks.probes import task_folds
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


def _write(cfg: GpuScaleConfig, scores: dict, tasks, stages: Stages, n_pool: int, device,
           work: Path) -> Path:
    """``gpu_scale.md`` + ``gpu_scale.json`` in ``workdir`` (small: they come back)."""
    from .preset_report import format_paired

    names = [t.name for t in tasks]
    lines = ["# UniRep → paper-size student, in process", "",
             f"Pool {n_pool} proteins ≤ {cfg.max_len} aa, `{cfg.preset}` student, {cfg.epochs} "
             f"epochs × {cfg.batch_tokens} tokens per step, device `{device}`; tasks: "
             f"{cfg.task_proteins} proteins, {cfg.folds} homology folds, linear probes.", "",
             "| model | " + " | ".join(f"{t.name} ({t.primary_metric})" for t in tasks)
             + " |", "|---|" + "---:|" * len(tasks)]
    best = cfg.names("teachers")[0]
    for name, s in scores.items():
        ratio = name.startswith("student")
        lines.append(f"| {name} | " + " | ".join(
            f"{np.mean(s[t]):.3f}" + (f" ({np.mean(s[t]) / np.mean(scores[best][t]):.2f}×)"
                                      if ratio else "") for t in names) + " |")
    lines += ["", "Paired differences per fold (mean ± SE, folds won):", "",
              "| pair | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for a in [k for k in scores if k.startswith("student-rl")]:
        for b in ("student-uniform", "student-none", "random-init", "kmer2"):
            if b in scores:
                lines.append(f"| {a} − {b} | " + " | ".join(format_paired(np.subtract(
                    scores[a][t], scores[b][t])) for t in names) + " |")
    embed = sum(v for k, v in stages.times.items() if k.startswith("embed tasks"))
    lines += ["", "Stage wall times (s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in stages.times.items() if not k.startswith("embed tasks"))
        + f"; task embeddings {embed:.1f}."]
    write_text(work / "gpu_scale.json", json.dumps({"scores": scores, "stages": stages.times}))
    return write_text(work / "gpu_scale.md", "\n".join(lines) + "\n")
