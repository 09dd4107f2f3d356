"""The probe: a 2-layer MLP trained on frozen per-protein embeddings, one fold at a time.

Protocols:

* ``inner-val`` (default, honest): a seeded validation split is carved from the *training*
  folds; training stops early on its loss and the best-validation epoch is evaluated once on
  the test fold.
* ``paper`` (optimistic, for comparison with the published numbers only): the reference code
  trains on all training folds and reports the epoch that scores best *on the test fold*. That
  selects on the test data, so its numbers are biased upwards and are labelled as such.

:func:`make_folds` defines the folds from the task labels and the seed only, so every model is
evaluated on exactly the same test proteins.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..config import option
from ..mlp_probe import MLPSettings, inner_split, train_mlp
from .metrics import compute_metrics
from .tasks import PRIMARY_METRIC

PROTOCOLS = ("inner-val", "paper")
PROBES = ("mlp", "knn")


@dataclass
class ProbeConfig(MLPSettings):
    """Probe hyper-parameters (the fixed default; ``--search`` samples lr, hidden size and
    weight decay around it): the MLP's (:class:`mtdp.mlp_probe.MLPSettings`, shared with
    ``mtdp predict``) and the benchmark's own."""

    min_term_count: int = option(50, ge=1, help=(
        "multi-label tasks (GO): terms predicted and scored in a fold are those with at least "
        "this many proteins in its training folds (chosen from the training side only)"))
    probe: str = option("mlp", choices=PROBES, help=(
        "mlp: a 2-layer MLP trained per fold; knn: annotation transfer from the k nearest "
        "training proteins in embedding space (goPredSim), and the MMseqs2 best-hit baseline "
        "where `mmseqs` is installed"))
    knn_k: int = option(1, ge=1, help="--probe knn: neighbours per test protein")
    knn_metric: str = option("cosine", choices=("cosine", "euclidean"), help=(
        "--probe knn: embedding distance"))


def make_folds(kind: str, labels: np.ndarray, n_folds: int = 10, seed: int = 42
               ) -> list[np.ndarray]:
    """Test-fold indices: ``StratifiedKFold`` for binary/multiclass, ``KFold`` otherwise,
    both ``shuffle=True, random_state=seed``. Depends on the labels and seed only."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    if len(labels) < n_folds:
        raise ValueError(f"{len(labels)} proteins cannot be split into {n_folds} folds")
    if kind in ("binary", "multiclass"):
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels)
    else:
        splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)))
    return [np.sort(test) for _, test in splits]


SPLITS = ("homology", "random")


def homology_folds(partitions: np.ndarray, n_folds: int) -> list[np.ndarray]:
    """Test-fold indices from homology partitions: the sorted partitions dealt in turn to
    ``min(n_folds, partitions)`` folds (partition p_k → fold k mod n), so each partition —
    and every sequence cluster inside it — is wholly in one fold."""
    partitions = np.asarray(partitions)
    parts = np.unique(partitions)
    if len(parts) < 2:
        raise ValueError(f"homology folds need at least 2 partitions, the data have "
                         f"{len(parts)}")
    n = min(n_folds, len(parts))
    fold_of = {p: k % n for k, p in enumerate(parts)}
    which = np.asarray([fold_of[p] for p in partitions])
    return [np.flatnonzero(which == k) for k in range(n)]


def task_folds(task, split: str, n_folds: int, seed: int) -> tuple[list[np.ndarray], str]:
    """The task's test folds under ``split`` and a line saying what they are (for reports).

    ``homology``: the data's homology partitions where the task has them (no cluster on both
    sides of a fold; as many folds as partitions, at most ``n_folds``), else seeded random
    folds and the line says so. ``random``: seeded random (stratified) ``n_folds`` folds, the
    paper's protocol (flatters every model on redundant data).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "homology" and task.partitions is not None:
        folds = homology_folds(task.partitions, n_folds)
        return folds, (f"split: homology, {len(folds)} folds from {task.partition_info}")
    folds = make_folds(task.kind, task.labels, n_folds, seed)
    if split == "homology":
        return folds, (f"split: random {n_folds}-fold (NO HOMOLOGY INFORMATION in this "
                       "task's data: test proteins may have close homologues in training)")
    return folds, f"split: random {n_folds}-fold (seed {seed}), as in the paper"


def fold_hash(ids: list[str], test_idx: np.ndarray) -> str:
    """Short digest of the test proteins' ids (identical across models by construction)."""
    h = hashlib.sha256("\n".join(sorted(ids[i] for i in test_idx)).encode())
    return h.hexdigest()[:16]


def train_probe(X: np.ndarray, labels: np.ndarray, kind: str, train_idx: np.ndarray,
                test_idx: np.ndarray, config: ProbeConfig, *, protocol: str = "inner-val",
                seed: int = 42) -> dict[str, Any]:
    """Train one probe on ``train_idx`` rows and evaluate on ``test_idx``.

    Features are standardised with the mean/std of the rows the probe is fitted on
    (regression targets too), never with test rows. Returns ``test_<metric>`` for every
    metric of the kind, ``val_loss`` and ``val_<primary>`` (inner-val protocol), the chosen
    ``best_epoch``, ``epochs`` run and sizes.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    t0 = time.perf_counter()
    n_terms = None
    if kind == "multilabel":
        labels, n_terms = _fold_terms(labels, train_idx, config.min_term_count)
    if protocol == "inner-val":
        fit_idx, val_idx = inner_split(train_idx, labels, kind, config.val_fraction, seed)
    else:
        fit_idx, val_idx = train_idx, np.array([], dtype=np.int64)
    score, x_test = None, None
    if protocol == "paper":  # optimistic reference protocol: the test fold picks the epoch
        def score(model, data) -> float:
            nonlocal x_test
            if x_test is None:  # standardised once, not every epoch
                x_test = data.feats(test_idx)
            return compute_metrics(kind, labels[test_idx], data.outputs(model, x_test)
                                   )[PRIMARY_METRIC[kind]]
    model, data, (best_epoch, epoch, best_val_loss) = train_mlp(
        X, labels, kind, fit_idx, val_idx, config, seed, score)
    x_test = data.feats(test_idx) if x_test is None else x_test
    result: dict[str, Any] = {f"test_{k}": v for k, v in compute_metrics(
        kind, labels[test_idx], data.outputs(model, x_test)).items()}
    if len(val_idx):
        result["val_loss"] = best_val_loss
        val_metrics = compute_metrics(kind, labels[val_idx],
                                      data.outputs(model, data.feats(val_idx)))
        result[f"val_{PRIMARY_METRIC[kind]}"] = val_metrics[PRIMARY_METRIC[kind]]
    result.update(best_epoch=best_epoch, epochs=epoch, n_train=len(fit_idx),
                  n_val=len(val_idx), n_test=len(test_idx),
                  probe_seconds=time.perf_counter() - t0)
    if n_terms is not None:
        result["n_terms"] = n_terms
    return result


def knn_probe(X: np.ndarray, labels: np.ndarray, kind: str, train_idx: np.ndarray,
              test_idx: np.ndarray, config: ProbeConfig) -> dict[str, Any]:
    """Annotation transfer on one fold: each test protein takes the labels of its
    ``knn_k`` nearest training proteins (:mod:`mtdp.search.transfer`: GO terms scored by
    reliability, classes by weighted vote, values by weighted mean); the same terms are
    scored as by the MLP probe (those frequent on the training side)."""
    from ..search.transfer import knn, transfer

    t0 = time.perf_counter()
    n_terms = None
    if kind == "multilabel":
        labels, n_terms = _fold_terms(labels, train_idx, config.min_term_count)
    idx, dist = knn(X[train_idx], X[test_idx], config.knn_k, config.knn_metric)
    n_classes = int(labels.max()) + 1 if kind in ("binary", "multiclass") else None
    out = transfer(idx, dist, labels[train_idx], kind, config.knn_metric, n_classes)
    result: dict[str, Any] = {f"test_{k}": v for k, v in compute_metrics(
        kind, labels[test_idx], out, scores=True).items()}
    result.update(best_epoch=0, epochs=0, n_train=len(train_idx), n_val=0,
                  n_test=len(test_idx), probe_seconds=time.perf_counter() - t0)
    if n_terms is not None:
        result["n_terms"] = n_terms
    return result


def _fold_terms(labels: np.ndarray, train_idx: np.ndarray, min_count: int
                ) -> tuple[np.ndarray, int]:
    """The label columns of the terms with >= ``min_count`` training proteins (counted on
    ``train_idx`` only: the test fold never chooses what is scored)."""
    keep = np.flatnonzero(labels[train_idx].sum(axis=0) >= min_count)
    if not len(keep):
        raise ValueError(f"no term has {min_count} or more proteins in the training folds "
                         f"({len(train_idx)} proteins, most frequent term "
                         f"{int(labels[train_idx].sum(axis=0).max())}): lower "
                         "--min-term-count or use more proteins")
    return labels[:, keep], len(keep)


def unit(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's task and fold from its grid point ``"task#fold"`` (tasks may have different
    numbers of folds, so the grid runs over (task, fold) pairs)."""
    task, fold = config["unit"].rsplit("#", 1)
    return {"task": task, "fold": int(fold)}


def probe_trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """Ray Tune trainable: one (model, task, fold[, sampled hyper-parameters]) trial.

    ``data`` (bound with ``tune.with_parameters``) maps ``"emb"`` → {model||task: ObjectRef of
    the [N, dim] embeddings} and ``"task"`` → {task: ObjectRef of a dict with labels, kind,
    ids and folds}; the arrays travel through Ray's object store (zero-copy reads), not files.
    """
    import ray
    from ray import tune

    # Each trial holds a fraction of a CPU: one thread, so trials do not oversubscribe cores.
    torch.set_num_threads(1)
    config = {**config, **unit(config)}
    task = ray.get(data["task"][config["task"]])
    X = ray.get(data["emb"][f"{config['model']}||{config['task']}"])
    fold = int(config["fold"])
    folds = task["folds"]
    test_idx = folds[fold]
    train_idx = np.sort(np.concatenate([f for k, f in enumerate(folds) if k != fold]))
    probe_fields = {k: config[k] for k in asdict(ProbeConfig()) if k in config}
    cfg = ProbeConfig(**probe_fields)
    if cfg.probe == "knn":
        result = knn_probe(X, task["labels"], task["kind"], train_idx, test_idx, cfg)
    else:
        result = train_probe(X, task["labels"], task["kind"], train_idx, test_idx, cfg,
                             protocol=config["protocol"], seed=int(config["seed"]) + fold)
    result["test_fold_hash"] = fold_hash(task["ids"], test_idx)
    tune.report(result)


def linear_probe_cv(X: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0,
                    C: float = 0.1) -> float:
    """Mean accuracy of a standardised L2 logistic regression under stratified ``folds``-fold
    CV: the quick probe of settings sweeps (no Ray, no early stopping); benchmarks use the
    MLP probe (:func:`train_probe`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    return float(cross_val_score(model, X, labels, cv=cv).mean())


def naive_fmax(task, split: str = "homology", n_folds: int = 10, seed: int = 42,
               min_term_count: int = 50) -> list[float]:
    """CAFA's naive baseline per fold of a multi-label task: every test protein gets each
    term's frequency in the training folds as its score (the terms scored as by the probe)."""
    from .metrics import fmax

    folds, _ = task_folds(task, split, n_folds, seed)
    out = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(task)), test)
        y, _ = _fold_terms(task.labels, train, min_term_count)
        freq = y[train].mean(axis=0)
        out.append(fmax(y[test], np.tile(freq, (len(test), 1)))[0])
    return out
