"""Run a benchmark: load tasks, embed each task once per model (cached), probe every
(model, task, fold) as a Ray Tune trial, then log to MLflow and write the report.

Embedding cache: ``<cache_dir>/<model>-<model key>/<task>-<data hash>.parquet``; the model key
hashes the model's identity (class, source, checkpoint SHA-256 or a weight fingerprint,
dimension, parameter count), the data hash the prepared sequences. A changed model or data set
therefore never reuses a stale file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .probes import PROTOCOLS, ProbeConfig, make_folds
from .tasks import Task, TaskUnavailable, load_task, resolve_task_names


@dataclass
class BenchmarkConfig(ProbeConfig):
    """Everything a benchmark run needs (CLI flags / YAML keys of ``tune/benchmark.py``)."""

    models: str = field(default="aac,kmer2", metadata={
        "help": "comma-separated model specs: student dirs (student:PATH), MLflow URIs, teacher "
                "names (esm2_t33_650M_UR50D, tiny-random-esm2 ...), local checkpoints, or "
                "baselines aac, kmer1..kmer3, random-student[:preset]"})
    tasks: str = field(default="all", metadata={
        "help": "comma-separated tasks (membrane, localization, go, go_bp, go_cc, meltome, esol, "
                "deepsol) or 'all' (the five paper tasks + deepsol; absent data is skipped)"})
    folds: int = field(default=10, metadata={"help": "cross-validation folds"})
    max_proteins: int | None = field(default=None, metadata={
        "help": "seeded random subset of at most this many proteins per task (speed); "
                "None = all"})
    seed: int = field(default=42, metadata={"help": "seed of folds, subsets and probes"})
    protocol: str = field(default="inner-val", metadata={
        "help": "inner-val: early stopping on a validation split of the training folds; "
                "paper: best epoch picked on the test fold (OPTIMISTIC, for comparison only)"})
    search: int = field(default=0, metadata={
        "help": "probe hyper-parameter samples per fold (lr, hidden, weight decay) chosen on "
                "the inner validation split; 0 = the fixed config"})
    output_dir: str = field(default="runs/benchmark", metadata={
        "help": "where summary.md/.csv, trials.csv, benchmark.png go"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "embedding cache (default: OUTPUT_DIR/../embedding-cache)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "task data folder (default: $MTDP_DATA_DIR)"})
    device: str | None = field(default=None, metadata={
        "help": "embedding device (cpu, cuda ...; default: best found)"})
    batch_tokens: int | None = field(default=None, metadata={
        "help": "padded tokens per embedding batch (default: by device)"})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads for embedding in the driver (default: torch's choice)"})
    cpus_per_trial: float = field(default=0.5, metadata={
        "help": "CPUs reserved per Tune trial (fractional: leaves room for other Ray work)"})
    max_concurrent: int | None = field(default=None, metadata={
        "help": "trials at a time (default: number of CPUs in the Ray cluster)"})
    experiment: str = field(default="mtdp-benchmark", metadata={"help": "MLflow experiment"})
    run_name: str | None = field(default=None, metadata={"help": "MLflow parent run name"})
    address: str | None = field(default=None, metadata={
        "help": "Ray cluster address (default: start a local Ray)"})

    def probe_config(self) -> ProbeConfig:
        """The probe part of this config."""
        return ProbeConfig(**{f.name: getattr(self, f.name)
                              for f in dataclasses.fields(ProbeConfig)})

    def model_specs(self) -> list[str]:
        specs = [m.strip() for m in self.models.split(",") if m.strip()]
        if not specs:
            raise ValueError("no model given (--models)")
        return specs

    def validate(self) -> None:
        """Raise ValueError naming the bad option."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.folds < 2:
            raise ValueError(f"--folds must be >= 2, got {self.folds}")
        if self.search < 0:
            raise ValueError(f"--search must be >= 0, got {self.search}")
        if self.search and self.protocol == "paper":
            raise ValueError("--search selects on the inner validation split; it cannot be "
                             "combined with --protocol paper")
        if self.max_proteins is not None and self.max_proteins < 2 * self.folds:
            raise ValueError(f"--max-proteins {self.max_proteins} is too small for "
                             f"{self.folds} folds")
        if not 0 < self.cpus_per_trial:
            raise ValueError("--cpus-per-trial must be > 0")
        resolve_task_names(self.tasks)
        self.model_specs()


@dataclass
class ModelInfo:
    """One model of the benchmark, as reported."""

    spec: str
    name: str
    parameters: int
    dim: int
    pretrained: bool
    key: str
    #: task → proteins/s measured when its embeddings were computed (on the machine then).
    throughput: dict[str, float] = field(default_factory=dict)
    #: task → proteins actually embedded for it (sequences shared with an earlier task are not).
    embedded: dict[str, int] = field(default_factory=dict)

    @property
    def proteins_per_s(self) -> float:
        """Overall throughput: all proteins embedded / all seconds spent embedding them."""
        pairs = [(self.embedded.get(t, 0), r) for t, r in self.throughput.items()
                 if np.isfinite(r) and r > 0 and self.embedded.get(t, 0) > 0]
        total = sum(n for n, _ in pairs)
        return total / sum(n / r for n, r in pairs) if total else float("nan")


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` produced."""

    trials: Any            # pandas.DataFrame, one row per Tune trial
    summary: Any           # pandas.DataFrame, mean ± std per model × task × metric
    models: list[ModelInfo]
    tasks: list[Task]
    skipped: dict[str, str]
    paths: dict[str, str]
    run_id: str | None
    seconds: float


# ---- embedding cache -------------------------------------------------------------------------

def model_identity(embedder) -> dict[str, Any]:
    """What makes an embedder's output unique: its description plus a weight fingerprint
    (checkpoint files are hashed by :meth:`describe`; random-init and hub models by a digest of
    a few parameter tensors)."""
    info = dict(embedder.describe())
    src = info.get("source") or ""
    if src and os.path.isdir(src):
        h = hashlib.sha256()
        for p in sorted(Path(src).glob("*.safetensors")) + sorted(Path(src).glob("*.bin")):
            h.update(p.name.encode())
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        info["weights_sha256"] = h.hexdigest()
    module = getattr(embedder, "model", None)
    if module is not None and hasattr(module, "parameters") and "sha256" not in info:
        params = list(module.parameters())
        h = hashlib.sha256()
        for t in (params[:2] + params[-2:]):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        info["weights_fingerprint"] = h.hexdigest()
    return info


def model_key(identity: dict[str, Any]) -> str:
    """Short stable key of :func:`model_identity`."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def cached_embeddings(embedder, task: Task, cache_dir: str | os.PathLike, *,
                      key: str | None = None, batch_tokens: int | None = None,
                      known: dict[str, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, float, bool, int]:
    """``(embeddings [N, dim], proteins/s, from_cache, proteins embedded)`` for a task,
    computing and caching the embeddings on first use. Throughput and count are those of the
    run that wrote the file (NaN / 0 if every sequence came from ``known``).

    ``known`` maps sequence → embedding from this model's earlier tasks in the same run (e.g.
    DeepLoc localisation ⊂ membrane), so no sequence is embedded twice; it is updated.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..embed import parquet_schema, read_embeddings

    key = key or model_key(model_identity(embedder))
    path = (Path(cache_dir) / f"{_safe(embedder.name)}-{key}" /
            f"{task.name}-{task.data_hash()[:16]}.parquet")
    if path.is_file():
        ids, emb = read_embeddings(path)
        meta = pq.read_schema(path).metadata or {}
        if ids == task.ids and emb.shape[1] == embedder.dim:
            if known is not None:
                known.update(zip(task.sequences, emb))
            return (emb, float(meta.get(b"proteins_per_s", b"nan")), True,
                    int(meta.get(b"embedded", b"0")))
    known = {} if known is None else known
    todo = sorted({s for s in task.sequences if s not in known})
    t0 = time.perf_counter()
    if todo:
        known.update(zip(todo, embedder.embed(todo, batch_tokens=batch_tokens)))
    seconds = time.perf_counter() - t0
    rate = len(todo) / seconds if todo and seconds > 0 else float("nan")
    emb = np.stack([known[s] for s in task.sequences]).astype(np.float32, copy=False)
    meta = {"model": embedder.name, "model_key": key, "task": task.name,
            "data_hash": task.data_hash(), "seconds": f"{seconds:.3f}",
            "embedded": str(len(todo)),
            "proteins_per_s": f"{rate:.3f}", "device": str(embedder.device)}
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = parquet_schema(embedder.dim, False, meta)
    table = pa.table({"id": pa.array(task.ids, pa.string()),
                      "length": pa.array([len(s) for s in task.sequences], pa.int32()),
                      "embedding": pa.FixedSizeListArray.from_arrays(
                          pa.array(emb.reshape(-1), pa.float32()), embedder.dim)}, schema=schema)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial, compression="zstd")
    os.replace(partial, path)  # atomic: a killed run never leaves a half file that looks done
    return emb, rate, False, len(todo)


# ---- the run ---------------------------------------------------------------------------------

def load_tasks(cfg: BenchmarkConfig, log=print) -> tuple[list[Task], dict[str, str]]:
    """Load the requested tasks; absent data → skipped with its message (never substituted)."""
    tasks, skipped = [], {}
    for name in resolve_task_names(cfg.tasks):
        try:
            tasks.append(load_task(name, cfg.data_dir, max_proteins=cfg.max_proteins,
                                   seed=cfg.seed, min_class_count=cfg.folds))
        except TaskUnavailable as exc:
            skipped[name] = str(exc)
            log(f"[benchmark] {exc}")
    if not tasks:
        raise RuntimeError("no task has its data available; nothing to benchmark "
                           f"({'; '.join(skipped.values())})")
    return tasks, skipped


def embed_all(cfg: BenchmarkConfig, tasks: list[Task], log=print
              ) -> tuple[list[ModelInfo], dict[str, np.ndarray]]:
    """Embed every task with every model (once; cached). Returns the models and
    ``{model||task: embeddings}``."""
    from ..embedder import load_embedder

    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.output_dir).parent / \
        "embedding-cache"
    if cfg.threads:
        import torch

        # Fewer threads than cores can be much faster on a shared, oversubscribed machine.
        torch.set_num_threads(cfg.threads)
    models: list[ModelInfo] = []
    arrays: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for spec in cfg.model_specs():
        embedder = load_embedder(spec, device=cfg.device)
        identity = model_identity(embedder)
        key = model_key(identity)
        name = embedder.name if embedder.name not in seen else f"{embedder.name}-{key[:6]}"
        seen.add(name)
        info = ModelInfo(spec, name, embedder.num_parameters(), embedder.dim,
                         embedder.pretrained, key)
        known: dict[str, np.ndarray] = {}
        for task in tasks:
            emb, rate, hit, count = cached_embeddings(embedder, task, cache, key=key,
                                                      batch_tokens=cfg.batch_tokens,
                                                      known=known)
            info.throughput[task.name] = rate
            info.embedded[task.name] = count
            arrays[f"{name}||{task.name}"] = emb
            log(f"[benchmark] {name} × {task.name}: {len(task)} proteins, dim {emb.shape[1]}, "
                f"{'cached' if hit else 'embedded'} ({rate:.1f} proteins/s)")
        models.append(info)
        del embedder, known
    return models, arrays


def _ensure_ray(cfg: BenchmarkConfig) -> None:
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not cfg.address:
            # A private local cluster: no token auth (CLI tools would otherwise need a token).
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=cfg.address or "local", include_dashboard=False, log_to_driver=False)


def run_tune(cfg: BenchmarkConfig, tasks: list[Task], models: list[ModelInfo],
             arrays: dict[str, np.ndarray], folds: dict[str, list[np.ndarray]], storage: Path):
    """One Tune trial per (model, task, fold[, hyper-parameter sample]); returns the
    :class:`ray.tune.ResultGrid`."""
    import ray
    from ray import tune

    from .probes import probe_trial

    _ensure_ray(cfg)
    # Arrays go into the object store once; trials read them zero-copy by reference.
    data = {"emb": {k: ray.put(v) for k, v in arrays.items()},
            "task": {t.name: ray.put({"labels": t.labels, "kind": t.kind, "ids": t.ids,
                                      "folds": folds[t.name]}) for t in tasks}}
    probe = dataclasses.asdict(cfg.probe_config())
    space: dict[str, Any] = {
        **probe,
        "model": tune.grid_search([m.name for m in models]),
        "task": tune.grid_search([t.name for t in tasks]),
        "fold": tune.grid_search(list(range(cfg.folds))),
        "protocol": cfg.protocol, "seed": cfg.seed,
    }
    if cfg.search:
        space.update(lr=tune.loguniform(1e-4, 1e-2), hidden=tune.choice([64, 128, 256, 512]),
                     weight_decay=tune.loguniform(1e-5, 1e-1))
    cpus = ray.cluster_resources().get("CPU", 1)
    concurrent = cfg.max_concurrent or max(1, int(cpus))
    trainable = tune.with_resources(tune.with_parameters(probe_trial, data=data),
                                    {"cpu": cfg.cpus_per_trial})
    from ray.tune.search import BasicVariantGenerator

    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=max(1, cfg.search),
            # Reusing trial actors skips a worker start + torch import per trial (seconds each
            # on a loaded 2-core machine, more than a small probe takes to train).
            reuse_actors=True,
            search_alg=BasicVariantGenerator(random_state=cfg.seed,
                                             max_concurrent=concurrent)),
        run_config=tune.RunConfig(storage_path=str(storage.resolve()),
                                  name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", verbose=0))
    return tuner.fit()


def collect_trials(grid, cfg: BenchmarkConfig, tasks: list[Task], models: list[ModelInfo]):
    """Tune results → one row per trial, with ``selected`` marking the trial each
    (model, task, fold) reports (the best inner-validation loss when searching)."""
    import pandas as pd

    kinds = {t.name: t.kind for t in tasks}
    params = {m.name: m.parameters for m in models}
    rows, errors = [], []
    for res in grid:
        c = res.config
        if res.error is not None:
            errors.append(f"{c.get('model')}/{c.get('task')}/fold {c.get('fold')}: {res.error}")
            continue
        row = {"model": c["model"], "task": c["task"], "kind": kinds[c["task"]],
               "fold": int(c["fold"]), "parameters": params[c["model"]],
               "lr": c["lr"], "hidden": c["hidden"], "weight_decay": c["weight_decay"],
               "protocol": c["protocol"], "trial_id": getattr(res, "path", "")}
        row.update({k: v for k, v in res.metrics.items()
                    if k.startswith(("test_", "val_")) or k in
                    ("best_epoch", "epochs", "n_train", "n_val", "n_test", "probe_seconds")})
        rows.append(row)
    if errors:
        msg = "\n".join(errors)
        if not rows:
            raise RuntimeError(f"every benchmark trial failed:\n{msg}")
        print(f"[benchmark] {len(errors)} trial(s) failed:\n{msg}")
    df = pd.DataFrame(rows).sort_values(["model", "task", "fold"]).reset_index(drop=True)
    df["selected"] = True
    if cfg.search:
        # Pick per fold on the inner validation loss only (the test fold never chooses).
        best = df.groupby(["model", "task", "fold"])["val_loss"].idxmin()
        df["selected"] = df.index.isin(best.values)
    return df, errors


def run_benchmark(cfg: BenchmarkConfig, log=print) -> BenchmarkResult:
    """The whole benchmark; see the module docstring. Prints progress through ``log``."""
    from . import report

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks, skipped = load_tasks(cfg, log)
    for t in tasks:
        log(f"[benchmark] task {t.name} ({t.kind}): {len(t)} proteins"
            + (f"; notes: {' | '.join(t.notes)}" if t.notes else ""))
    models, arrays = embed_all(cfg, tasks, log)
    folds = {t.name: make_folds(t.kind, t.labels, cfg.folds, cfg.seed) for t in tasks}
    t_probe = time.perf_counter()
    grid = run_tune(cfg, tasks, models, arrays, folds, out / "tune")
    log(f"[benchmark] {len(grid)} Tune trials in {time.perf_counter() - t_probe:.1f} s")
    trials, errors = collect_trials(grid, cfg, tasks, models)
    summary = report.summarize(trials[trials["selected"]], tasks, models)
    seconds = time.perf_counter() - t0
    paths = report.write_outputs(out, cfg, trials, summary, tasks, models, skipped, seconds)
    run_id = report.log_mlflow(cfg, trials, summary, tasks, models, skipped, paths, seconds)
    return BenchmarkResult(trials, summary, models, tasks, skipped, paths, run_id,
                           time.perf_counter() - t0)
