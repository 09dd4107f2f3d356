"""The predictor-parity check's pieces (see research/predictor_parity.py): a task's files as a
user would give them to `mtdp predict fit`, and both probes on the same homology folds."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np


def _fold_names(folds: list[np.ndarray]) -> list[str]:
    """Each protein's fold as a group name (``f0``, ``f1``, ...)."""
    out = np.empty(sum(len(f) for f in folds), dtype=object)
    for k, f in enumerate(folds):
        out[f] = f"f{k}"
    return list(out)


def _files(task, X: np.ndarray, groups: list[str], model: str, work: Path) -> tuple:
    """The embeddings (.npy + ids + model) and a labels TSV with ``groups`` as group column."""
    np.save(work / "e.npy", X.astype(np.float32))
    (work / "e.ids.txt").write_text("".join(f"{i}\n" for i in task.ids))
    (work / "e.meta.json").write_text(json.dumps({"model": model}))
    if task.kind == "multilabel":
        values = [";".join(task.classes[j] for j in np.flatnonzero(row)) for row in task.labels]
    elif task.kind == "regression":
        values = [f"{v:.6g}" for v in task.labels]
    else:
        values = [task.classes[v] for v in task.labels]
    lines = ["id\tlabel\tfold"] + [f"{i}\t{v}\t{g}" for i, v, g in zip(task.ids, values, groups)]
    (work / "labels.tsv").write_text("\n".join(lines) + "\n")
    return work / "e.npy", work / "labels.tsv"


def _frequent_terms(task, min_count: int = 50):
    """The task with only the GO terms of >= ``min_count`` proteins (and proteins keeping one),
    and the rows kept."""
    import dataclasses

    keep = np.flatnonzero(task.labels.sum(0) >= min_count)
    lab = task.labels[:, keep]
    rows = np.flatnonzero(lab.any(1))
    return rows, dataclasses.replace(task, ids=[task.ids[i] for i in rows],
                               sequences=[task.sequences[i] for i in rows], labels=lab[rows],
                               classes=[task.classes[j] for j in keep],
                               partitions=None if task.partitions is None
                               else task.partitions[rows])


def parity(model: str, name: str, proteins: int, store: Path) -> dict:
    from mtdp.evaluate.cache import cached_embeddings
    from mtdp.evaluate.probes import ProbeConfig, task_folds, train_probe
    from mtdp.evaluate.tasks import PRIMARY_METRIC, load_task
    from mtdp.models.registry import load_embedder
    from mtdp.predictor import _folds, fit_predictor

    task = load_task(name, max_proteins=proteins, seed=42, min_class_count=5)
    X = cached_embeddings(load_embedder(model, device="cpu"), task, store)[0]
    if task.kind == "multilabel":
        rows, task = _frequent_terms(task)
        X = X[rows]
    folds = task_folds(task, "homology", 5, 42)[0]
    metric = PRIMARY_METRIC[task.kind]
    bench = []
    for k, test in enumerate(folds):
        train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != k]))
        # min_term_count 1: score the terms the labels give (as the predictor does); the
        # benchmark's own per-fold choice of frequent terms would score fewer, easier terms.
        bench.append(train_probe(X, task.labels, task.kind, train, test,
                                 ProbeConfig(min_term_count=1), seed=42 + k)[f"test_{metric}"])
    groups = _fold_names(folds)
    with tempfile.TemporaryDirectory() as tmp:
        emb, labels = _files(task, X, groups, model, Path(tmp))
        card = fit_predictor(emb, labels, Path(tmp) / "p", kind=task.kind,
                             group_column="fold", folds=len(folds), seed=42)
    pred = [f[metric] for f in card.cv["per_fold"]]
    # The predictor's grouped folds (GroupKFold) come in their own order: pair them with
    # the homology folds through their test sets.
    order = [int(np.argmax([len(set(t) & set(f)) for f in folds]))
             for _, t in _folds(len(groups), task.kind, task.labels, groups, len(folds), 42)]
    bench_paired = np.array(bench)[order]
    d = np.array(pred) - bench_paired
    return {"task": name, "metric": metric, "proteins": len(task.ids), "folds": len(folds),
            "predictor": pred, "benchmark": bench_paired.tolist(),
            "difference": float(d.mean()), "difference_se": float(d.std(ddof=1) / np.sqrt(len(d)))}

