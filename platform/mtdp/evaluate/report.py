"""Benchmark outputs: the summary table (mean ± std per model × task, Markdown + CSV), the
figure (box plots per task against model size, like the paper's Fig. 1C) and MLflow logging
(a parent run per benchmark, one nested run per trial)."""
from __future__ import annotations

import json
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import PRIMARY_METRIC, Task

#: Metric columns per kind, primary first.
KIND_METRICS = {"binary": ["f1_macro", "balanced_accuracy", "accuracy"],
                "multiclass": ["accuracy", "f1_weighted", "f1_macro"],
                "multilabel": ["fmax", "fmax_coverage", "micro_aupr", "macro_aupr"],
                "regression": ["spearman", "pearson", "rmse"]}
METRIC_LABEL = {"f1_macro": "macro F1", "balanced_accuracy": "balanced acc.",
                "accuracy": "accuracy", "f1_weighted": "weighted F1", "fmax": "Fmax",
                "fmax_coverage": "coverage at Fmax", "micro_aupr": "micro AUPR",
                "macro_aupr": "macro AUPR", "spearman": "Spearman ρ", "pearson": "Pearson r",
                "rmse": "RMSE"}


def human_params(n: int) -> str:
    """1234567 → '1.2M'; 0 → 'no weights'."""
    if n <= 0:
        return "no weights"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def summarize(trials, tasks: list[Task], models) -> Any:
    """Long table: one row per model × task × metric with mean, std and folds."""
    import pandas as pd

    info = {m.name: m for m in models}
    rows = []
    for t in tasks:
        for metric in KIND_METRICS[t.kind]:
            col = f"test_{metric}"
            sub = trials[trials["task"] == t.name]
            for model, g in sub.groupby("model", sort=False):
                vals = g[col].astype(float).to_numpy()
                m = info[model]
                rows.append({"model": model, "parameters": m.parameters,
                             "proteins_per_s": round(m.throughput.get(t.name, float("nan")), 2),
                             "task": t.name, "kind": t.kind, "metric": metric,
                             "primary": metric == PRIMARY_METRIC[t.kind],
                             "mean": float(np.nanmean(vals)), "std": float(np.nanstd(vals)),
                             "folds": int(np.isfinite(vals).sum()),
                             "partial_data": t.partial})
    df = pd.DataFrame(rows)
    order = {m.name: (m.parameters, i) for i, m in enumerate(models)}
    df["_o"] = df["model"].map(order)
    return df.sort_values(["_o", "task", "metric"], key=None).drop(columns="_o"
                                                                  ).reset_index(drop=True)


def _model_order(models) -> list:
    return sorted(models, key=lambda m: (m.parameters, m.name))


def markdown_table(summary, tasks: list[Task], models, cfg, skipped: dict[str, str],
                   seconds: float, transfer: list[str] | None = None) -> str:
    """The report: primary metric per model × task (mean ± std over folds), secondary metrics,
    throughput, data caveats and the protocol."""
    how = (f"{cfg.folds}-fold CV" if cfg.split == "random" else
           f"homology-split CV (≤ {cfg.folds} folds; per task under 'Tasks and data')")
    lines = [f"# mtdp downstream benchmark ({how}, protocol `{cfg.protocol}`)", ""]
    if cfg.protocol == "paper":
        lines += ["**OPTIMISTIC: the best epoch was picked on the test fold (reference code's "
                  "protocol). Do not compare with inner-validation numbers.**", ""]
    heads = [f"{t.name} ({METRIC_LABEL[t.primary_metric]})" + (" *" if t.partial else "")
             for t in tasks]
    lines.append("| model | parameters | proteins/s | " + " | ".join(heads) + " |")
    lines.append("|---|---:|---:|" + "---:|" * len(tasks))
    for m in _model_order(models):
        cells = []
        for t in tasks:
            r = summary[(summary.model == m.name) & (summary.task == t.name) & summary.primary]
            cells.append(f"{r['mean'].iloc[0]:.3f} ± {r['std'].iloc[0]:.3f}" if len(r) else "—")
        lines.append(f"| {m.name} | {human_params(m.parameters)} | {m.proteins_per_s:.1f} | "
                     + " | ".join(cells) + " |")
    lines += transfer or []
    lines += ["", "Secondary metrics (mean ± std over folds):", ""]
    lines.append("| model | task | metric | mean ± std |")
    lines.append("|---|---|---|---:|")
    for m in _model_order(models):
        for t in tasks:
            for metric in KIND_METRICS[t.kind][1:]:
                r = summary[(summary.model == m.name) & (summary.task == t.name)
                            & (summary.metric == metric)]
                if len(r):
                    lines.append(f"| {m.name} | {t.name} | {METRIC_LABEL[metric]} | "
                                 f"{r['mean'].iloc[0]:.3f} ± {r['std'].iloc[0]:.3f} |")
    lines += ["", "Tasks and data:", ""]
    for t in tasks:
        lines.append(f"- **{t.name}** ({t.kind}, {len(t)} proteins): {t.description}. Source: "
                     f"{t.source.citation}; {t.source.url}; licence {t.source.licence}.")
        for n in t.notes:
            lines.append(f"  - {n}")
    for name, why in skipped.items():
        lines.append(f"- **{name}**: SKIPPED, {why}")
    lines += ["", "`*` partial / non-canonical local data (see notes): not comparable with "
              "published numbers on the full sets.", "",
              probe_line(cfg) + f". Folds: split `{cfg.split}`; random folds seed {cfg.seed}, "
              "stratified for classification. Throughput: proteins/s while embedding, on "
              f"{platform.node() or 'this machine'} ({cfg.device or 'best device'}). "
              f"Wall time {seconds:.0f} s.", ""]
    return "\n".join(lines)


def probe_line(cfg) -> str:
    """The report's sentence on how the embeddings were probed."""
    if getattr(cfg, "probe", "mlp") == "knn":
        return (f"Probe: annotation transfer from the {cfg.knn_k} nearest training "
                f"protein(s) by {cfg.knn_metric} distance (goPredSim; GO: reliability-scored "
                "terms, classes: weighted vote, values: weighted mean; no training); "
                "mmseqs2-besthit: labels of the best MMseqs2 hit (bit score) on the training "
                "side, GO scored by its sequence identity, proteins without a hit get no "
                "terms (classes: the training majority, values: the training mean)")
    return (f"Probe: 2-layer MLP (GELU), AdamW, hidden {cfg.hidden}, lr {cfg.lr}, weight decay "
            f"{cfg.weight_decay}, ≤ {cfg.max_epochs} epochs, patience {cfg.patience}"
            + (f"; {cfg.search} sampled configs per fold chosen on the inner validation split"
               if cfg.search else ""))


def plot_figure(trials, tasks: list[Task], models, path: Path, protocol: str) -> Path:
    """Box plots of the primary metric over folds, one panel per task, models ordered by size
    (the paper's Fig. 1C layout). Agg backend: no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = _model_order(models)
    n = len(tasks)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    width = max(4.2, 0.9 * len(ordered) + 1.6)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4.2 * rows), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(len(ordered), 2)))
    for ax, t in zip(axes.flat, tasks):
        metric = t.primary_metric
        data, labels = [], []
        for m in ordered:
            v = trials[(trials.model == m.name) & (trials.task == t.name)][f"test_{metric}"]
            data.append(v.astype(float).dropna().to_numpy())
            size = human_params(m.parameters)
            labels.append(f"{m.name}\n{size}" + ("" if m.pretrained or not m.parameters
                                                  else ", random"))
        bp = ax.boxplot(data, patch_artist=True, widths=0.6, showmeans=True, showfliers=False,
                        medianprops=dict(color="black", linewidth=1.5),
                        meanprops=dict(marker="D", markerfacecolor="white",
                                       markeredgecolor="black", markersize=4))
        for patch, c in zip(bp["boxes"], colors):
            patch.set_facecolor(c)
            patch.set_alpha(0.75)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data, 1):  # the fold scores themselves, jittered
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=9, color="black", zorder=3,
                       alpha=0.6)
        ax.set_xticks(range(1, len(labels) + 1))
        ax.set_xticklabels(labels, fontsize=8, rotation=30 if len(labels) > 4 else 0,
                           ha="right" if len(labels) > 4 else "center")
        title = f"{t.name} ({len(t)} proteins)" + (" *partial data" if t.partial else "")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(METRIC_LABEL[metric])
        ax.set_xlabel("model (ordered by parameters)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    n_folds = int(trials["fold"].nunique()) if len(trials) else 0
    sup = f"mtdp downstream benchmark: {n_folds}-fold test scores per model (protocol {protocol})"
    if protocol == "paper":
        sup += "\nOPTIMISTIC: epoch picked on the test fold"
    fig.suptitle(sup, fontsize=11)
    fig.text(0.01, 0.005, "box: quartiles, line: median, ◇: mean, dots: folds; "
             "* partial local data (see summary.md)", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(out: Path, cfg, trials, summary, tasks: list[Task], models,
                  skipped: dict[str, str], seconds: float,
                  transfer: list[str] | None = None) -> dict[str, str]:
    """Write summary.md, summary.csv, trials.csv, tasks.json and benchmark.png into ``out``."""
    import dataclasses

    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary_md": out / "summary.md", "summary_csv": out / "summary.csv",
             "trials_csv": out / "trials.csv", "tasks_json": out / "tasks.json",
             "figure": out / "benchmark.png"}
    paths["summary_md"].write_text(markdown_table(summary, tasks, models, cfg, skipped, seconds,
                                                  transfer))
    summary.to_csv(paths["summary_csv"], index=False)
    trials.to_csv(paths["trials_csv"], index=False)
    meta = {"config": dataclasses.asdict(cfg), "seconds": round(seconds, 1),
            "tasks": {t.name: {"kind": t.kind, "proteins": len(t), "notes": t.notes,
                               "data_hash": t.data_hash(),
                               "source": dataclasses.asdict(t.source)} for t in tasks},
            "skipped": skipped,
            "models": [{**dataclasses.asdict(m), "proteins_per_s": m.proteins_per_s}
                       for m in models]}
    paths["tasks_json"].write_text(json.dumps(meta, indent=2, default=str))
    plot_figure(trials[trials["selected"]], tasks, models, paths["figure"], cfg.protocol)
    return {k: str(v) for k, v in paths.items()}


def _metric_key(*parts: str) -> str:
    # MLflow metric names: alphanumerics, _ - . / and spaces.
    return re.sub(r"[^A-Za-z0-9_./ -]", "_", ".".join(parts))


def log_mlflow(cfg, trials, summary, tasks: list[Task], models, skipped: dict[str, str],
               paths: dict[str, str], seconds: float) -> str:
    """A parent run (config, summary metrics, table, figure) with one nested run per trial,
    logged from the driver after Tune returned (no SQLite races between trials)."""
    import time

    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from ..config import flat_params
    from ..tracking import setup_mlflow

    setup_mlflow(cfg.experiment)
    client = MlflowClient()
    name = cfg.run_name or f"benchmark-{'+'.join(m.name for m in models)}"[:200]
    with mlflow.start_run(run_name=name) as parent:
        pid, exp = parent.info.run_id, parent.info.experiment_id
        mlflow.log_params({k: str(v)[:500] for k, v in flat_params(cfg).items()})
        mlflow.set_tags({"mtdp.kind": "benchmark", "protocol": cfg.protocol,
                         "optimistic": str(cfg.protocol == "paper").lower(),
                         "tasks": ",".join(t.name for t in tasks),
                         "skipped_tasks": ",".join(skipped) or "none",
                         "partial_data": ",".join(t.name for t in tasks if t.partial) or "none"})
        metrics = {"wall_seconds": seconds}
        for r in summary.itertuples():
            metrics[_metric_key(r.task, r.metric, r.model, "mean")] = r.mean
            metrics[_metric_key(r.task, r.metric, r.model, "std")] = r.std
        for m in models:
            metrics[_metric_key("parameters", m.name)] = m.parameters
            metrics[_metric_key("proteins_per_s", m.name)] = m.proteins_per_s
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        for key in ("summary_md", "summary_csv", "trials_csv", "tasks_json", "figure"):
            mlflow.log_artifact(paths[key])
        now = int(time.time() * 1000)
        for r in trials.to_dict("records"):
            run = client.create_run(exp, run_name=f"{r['model']}/{r['task']}/fold{r['fold']}",
                                    tags={"mlflow.parentRunId": pid})
            params = {k: r[k] for k in ("model", "task", "kind", "fold", "lr", "hidden",
                                        "weight_decay", "protocol", "parameters", "selected",
                                        "test_fold_hash") if k in r}
            vals = {k: v for k, v in r.items()
                    if k.startswith(("test_", "val_")) and k != "test_fold_hash"}
            vals.update({k: r[k] for k in ("best_epoch", "epochs", "n_train", "n_val", "n_test",
                                           "probe_seconds") if k in r})
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in vals.items()
                         if v is not None and np.isfinite(float(v))],
                params=[Param(k, str(v)) for k, v in params.items()],
                tags=[RunTag("mtdp.kind", "benchmark-trial")])
            client.set_terminated(run.info.run_id)
    return pid
