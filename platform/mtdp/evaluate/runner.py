"""Run a benchmark: load tasks, embed each task once per model (:mod:`.cache`), probe every
(model, task, fold) as a Ray Tune trial, then log to MLflow and write the report."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models.registry import load_embedder
from ..store.keys import fingerprint, fingerprint_key
from ..runtime import init_ray
from ..store import EmbeddingStore
from .cache import cached_embeddings
from .config import BenchmarkConfig
from .probes import task_folds, unit
from .sources import TaskUnavailable
from .tasks import Task, load_task, resolve_task_names
from .transfer import transfer_section


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
    #: The model's throughput recorded in the store (when a task embedded nothing now).
    stored_rate: float = float("nan")

    @property
    def proteins_per_s(self) -> float:
        """Overall throughput: all proteins embedded / all seconds spent embedding them (the
        store's record of the model when this run embedded nothing)."""
        pairs = [(self.embedded.get(t, 0), r) for t, r in self.throughput.items()
                 if np.isfinite(r) and r > 0 and self.embedded.get(t, 0) > 0]
        total = sum(n for n, _ in pairs)
        return total / sum(n / r for n, r in pairs) if total else self.stored_rate


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


def report_name(spec: str, embedder) -> str:
    """A model's name in reports: a student directory by its folder (``runs/rl/student`` →
    ``rl``), an MLflow model by ``NAME/VERSION``, anything else by the embedder's name."""
    from ..models.registry import display_identity, resolve

    ms = resolve(spec)
    if ms.kind == "student":
        p = Path(ms.value)
        return p.parent.name if p.name == "student" else p.name
    if ms.value.startswith("models:/"):
        return "/".join(display_identity(spec, embedder))
    return embedder.name


def embed_all(cfg: BenchmarkConfig, tasks: list[Task], log=print
              ) -> tuple[list[ModelInfo], dict[str, np.ndarray]]:
    """Embed every task with every model (once; cached). Returns the models and
    ``{model||task: embeddings}``."""
    store = EmbeddingStore(cfg.cache_dir or Path(cfg.output_dir).parent / "embedding-store")
    if cfg.threads:
        import torch

        # Fewer threads than cores can be much faster on a shared, oversubscribed machine.
        torch.set_num_threads(cfg.threads)
    models: list[ModelInfo] = []
    arrays: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for spec in cfg.model_specs():
        embedder = load_embedder(spec, device=cfg.device)
        key = fingerprint_key(fingerprint(embedder))
        name = report_name(spec, embedder)
        name = name if name not in seen else f"{name}-{key[:6]}"
        seen.add(name)
        info = ModelInfo(spec, name, embedder.num_parameters(), embedder.dim,
                         embedder.pretrained, key)
        for task in tasks:
            emb, rate, hit, count = cached_embeddings(embedder, task, None,
                                                      batch_tokens=cfg.batch_tokens,
                                                      store=store)
            info.throughput[task.name] = rate
            info.embedded[task.name] = count
            if hit:
                info.stored_rate = rate
            arrays[f"{name}||{task.name}"] = emb
            log(f"[benchmark] {name} × {task.name}: {len(task)} proteins, dim {emb.shape[1]}, "
                f"{'from the store' if hit else f'{count} embedded'} ({rate:.1f} proteins/s)")
        models.append(info)
        del embedder
    return models, arrays


def run_tune(cfg: BenchmarkConfig, tasks: list[Task], models: list[ModelInfo],
             arrays: dict[str, np.ndarray], folds: dict[str, list[np.ndarray]], storage: Path,
             log=print):
    """One Tune trial per (model, task, fold[, hyper-parameter sample]); returns the
    :class:`ray.tune.ResultGrid`."""
    import ray
    from ray import tune

    from .probes import probe_trial

    init_ray(cfg.address, log_to_driver=False)
    # Arrays go into the object store once; trials read them zero-copy by reference.
    data = {"emb": {k: ray.put(v) for k, v in arrays.items()},
            "task": {t.name: ray.put({"labels": t.labels, "kind": t.kind, "ids": t.ids,
                                      "folds": folds[t.name]}) for t in tasks}}
    probe = dataclasses.asdict(cfg.probe_config())
    space: dict[str, Any] = {
        **probe,
        "model": tune.grid_search([m.name for m in models]),
        "unit": tune.grid_search([f"{t.name}#{k}" for t in tasks
                                  for k in range(len(folds[t.name]))]),
        "protocol": cfg.protocol, "seed": cfg.seed,
    }
    if cfg.search:
        space.update(lr=tune.loguniform(1e-4, 1e-2), hidden=tune.choice([64, 128, 256, 512]),
                     weight_decay=tune.loguniform(1e-5, 1e-1))
    cpus = ray.cluster_resources().get("CPU", 1)
    concurrent = cfg.max_concurrent or max(1, int(cpus))
    total = len(models) * sum(len(f) for f in folds.values()) * max(1, cfg.search)
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
                                  name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", verbose=0,
                                  callbacks=[trial_counter(total, log)]))
    return tuner.fit()


def trial_counter(total: int, log=print):
    """A Tune callback logging ``[benchmark] trial 5/60 done: model × task, fold 3 (...)``
    as each trial ends, so the probe phase is never silent for minutes."""
    from ray import tune

    global _TrialCounter
    if _TrialCounter is None:
        class TrialCounter(_CounterBase, tune.Callback):
            pass

        TrialCounter.__qualname__ = TrialCounter.__name__ = "_TrialCounter"
        _TrialCounter = TrialCounter
    return _TrialCounter(total, log)


class _CounterBase:
    """The counter's logic (module level, so Tune pickles it by reference; the logger — print
    or a test's capture — is left out of the pickle and a restored counter prints)."""

    def __init__(self, total: int, log=print) -> None:
        self.total, self.done, self.t0, self.log = total, 0, time.perf_counter(), log

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "log"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, log=print)

    def _line(self, trial, what: str) -> None:
        self.done += 1
        c = {**trial.config, **unit(trial.config)}
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done)
        self.log(f"[benchmark] trial {self.done}/{self.total} {what}: {c.get('model')} × "
                 f"{c.get('task')}, fold {c.get('fold')} ({el:.0f} s, ~{eta:.0f} s left)")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._line(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, "FAILED")


#: The Tune callback class (built on first use: ``ray.tune`` is imported lazily).
_TrialCounter = None


def collect_trials(grid, cfg: BenchmarkConfig, tasks: list[Task], models: list[ModelInfo]):
    """Tune results → one row per trial, with ``selected`` marking the trial each
    (model, task, fold) reports (the best inner-validation loss when searching)."""
    import pandas as pd

    kinds = {t.name: t.kind for t in tasks}
    params = {m.name: m.parameters for m in models}
    rows, errors = [], []
    for res in grid:
        c = {**res.config, **unit(res.config)}
        if res.error is not None:
            errors.append(f"{c.get('model')}/{c.get('task')}/fold {c.get('fold')}: {res.error}")
            continue
        row = {"model": c["model"], "task": c["task"], "kind": kinds[c["task"]],
               "fold": int(c["fold"]), "parameters": params[c["model"]],
               "lr": c["lr"], "hidden": c["hidden"], "weight_decay": c["weight_decay"],
               "protocol": c["protocol"], "trial_id": getattr(res, "path", "")}
        row.update({k: v for k, v in res.metrics.items()
                    if k.startswith(("test_", "val_")) or k in
                    ("best_epoch", "epochs", "n_train", "n_val", "n_test", "n_terms",
                     "probe_seconds")})
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


def with_homology_baseline(trials, cfg: BenchmarkConfig, tasks: list[Task],
                           folds: dict[str, list[np.ndarray]], models: list[ModelInfo],
                           log=print):
    """``--probe knn``: the MMseqs2 best-hit rows added to ``trials`` (and the baseline to
    ``models``) where ``mmseqs`` is installed; otherwise a message and ``trials`` as given."""
    import pandas as pd

    from . import homology

    if not homology.mmseqs_binary():
        log(f"[benchmark] {homology.missing_message()}")
        return trials
    rows = pd.DataFrame(homology.baseline_rows(tasks, folds, cfg, log))
    rows["selected"] = True
    models.append(ModelInfo("mmseqs2", homology.NAME, 0, 0, False, "mmseqs2"))
    return pd.concat([trials, rows], ignore_index=True)


def run_benchmark(cfg: BenchmarkConfig, log=print) -> BenchmarkResult:
    """The whole benchmark; see the module docstring. Prints progress through ``log``."""
    from . import report

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not [m for m in cfg.models if m]:
        from .config import default_models

        specs, line = default_models()
        log(f"[benchmark] {line}")
        cfg = dataclasses.replace(cfg, models=specs)
    tasks, skipped = load_tasks(cfg, log)
    for t in tasks:
        log(f"[benchmark] task {t.name} ({t.kind}): {len(t)} proteins"
            + (f"; notes: {' | '.join(t.notes)}" if t.notes else ""))
    models, arrays = embed_all(cfg, tasks, log)
    folds = {}
    for t in tasks:
        folds[t.name], line = task_folds(t, cfg.split, cfg.folds, cfg.seed)
        t.notes.insert(0, line)
        log(f"[benchmark] {t.name}: {line}")
    t_probe = time.perf_counter()
    grid = run_tune(cfg, tasks, models, arrays, folds, out / "tune", log)
    log(f"[benchmark] {len(grid)} Tune trials in {time.perf_counter() - t_probe:.1f} s")
    trials, errors = collect_trials(grid, cfg, tasks, models)
    if cfg.probe == "knn":
        trials = with_homology_baseline(trials, cfg, tasks, folds, models, log)
    summary = report.summarize(trials[trials["selected"]], tasks, models)
    teacher = next((m.name for m in models if cfg.teacher and cfg.teacher in (m.spec, m.name)),
                   "")
    section = transfer_section(trials, tasks, models, arrays, teacher) if teacher else []
    seconds = time.perf_counter() - t0
    paths = report.write_outputs(out, cfg, trials, summary, tasks, models, skipped, seconds,
                                 section)
    run_id = report.log_mlflow(cfg, trials, summary, tasks, models, skipped, paths, seconds)
    return BenchmarkResult(trials, summary, models, tasks, skipped, paths, run_id,
                           time.perf_counter() - t0)
