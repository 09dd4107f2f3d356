"""Predictors on your own labels: a small MLP from per-protein embeddings (any file
``mtdp embed`` writes) to binary, multi-class, multi-label or numeric labels, scored by
cross-validation before it is fitted on everything, saved, and applied to new embeddings —
the paper's workflow after embedding (its Fig. 1B and the released fine-tuning scripts). The
MLP is the benchmark's probe (:mod:`mtdp.mlp_probe`: same architecture, standardisation, inner
validation split and early stopping), so a predictor's CV score is what tune/benchmark.py
reports on the same folds (``research/predictor_parity.py``).

Folds are grouped when the labels file has a group column (e.g. sequence clusters or
homology partitions): a protein and its relatives never sit on both sides, as in the
benchmark's homology folds."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_open, atomic_path
from .outputs import embedding_model, read_embeddings

KINDS = ("binary", "multiclass", "multilabel", "regression")
MODEL_FILE, CARD_FILE = "model.pt", "predictor.json"
#: Separators of several labels in one multi-label cell.
LABEL_SEPARATORS = ";|,"


@dataclass
class Labels:
    """The labels file read: ids in file order, raw label values, optional groups."""

    ids: list[str]
    values: list[str]
    groups: list[str] | None = None


def read_labels(path: str | Path, label_column: str = "label", id_column: str = "id",
                group_column: str | None = None, min_rows: int = 4) -> Labels:
    """A TSV or CSV (by extension; ``.tsv``/``.txt`` tab-separated) with a header row.

    Raises:
        ValueError: a missing column, an empty label, or an id given twice, naming the file
            and line.
    """
    p = Path(path)
    delim = "," if p.suffix.lower() == ".csv" else "\t"
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delim)
        cols = reader.fieldnames or []
        for col in (id_column, label_column, group_column):
            if col and col not in cols:
                raise ValueError(f"{p}: no column {col!r} in the header (columns: {cols}); "
                                 "choose with --id-column / --label-column / --group-column")
        out = Labels([], [], [] if group_column else None)
        seen: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            pid, value = (row[id_column] or "").strip(), (row[label_column] or "").strip()
            if not pid or not value:
                raise ValueError(f"{p} line {line}: empty {'id' if not pid else 'label'}")
            if pid in seen:
                raise ValueError(f"{p} line {line}: id {pid!r} already given on line "
                                 f"{seen[pid]}")
            seen[pid] = line
            out.ids.append(pid)
            out.values.append(value)
            if out.groups is not None:
                out.groups.append((row[group_column] or "").strip())
    if len(out.ids) < min_rows:
        raise ValueError(f"{p}: {len(out.ids)} labelled protein(s); at least {min_rows} needed")
    return out


def _split_multi(value: str) -> list[str]:
    for sep in LABEL_SEPARATORS:
        if sep in value:
            return [v.strip() for v in value.split(sep) if v.strip()]
    return [value]


def infer_kind(values: list[str]) -> str:
    """``regression`` if every label is a number with more than two distinct values,
    ``multilabel`` if any cell holds several labels, else ``binary`` / ``multiclass``."""
    def number(v: str) -> bool:
        try:
            return math.isfinite(float(v))
        except ValueError:
            return False

    distinct = set(values)
    if all(number(v) for v in values) and len(distinct) > 2:
        return "regression"
    if any(len(_split_multi(v)) > 1 for v in values):
        return "multilabel"
    return "binary" if len(distinct) == 2 else "multiclass"


@dataclass
class PredictorCard:
    """What a saved predictor is: its kind, classes, the embeddings it expects, its CV."""

    kind: str
    classes: list[str]
    dim: int
    embedding_model: str
    proteins: int
    hidden: int
    cv: dict[str, Any] = field(default_factory=dict)


def _targets(kind: str, values: list[str]) -> tuple[np.ndarray, list[str]]:
    if kind == "regression":
        try:
            return np.array([float(v) for v in values], dtype=np.float64), []
        except ValueError as exc:
            raise ValueError(f"regression labels must be numbers: {exc}") from None
    if kind == "multilabel":
        sets = [_split_multi(v) for v in values]
        classes = sorted({c for s in sets for c in s})
        y = np.zeros((len(values), len(classes)), dtype=np.int64)
        index = {c: i for i, c in enumerate(classes)}
        for r, s in enumerate(sets):
            y[r, [index[c] for c in s]] = 1
        return y, classes
    classes = sorted(set(values))
    if kind == "binary" and len(classes) != 2:
        raise ValueError(f"binary labels need exactly 2 values, found {len(classes)}: "
                         f"{classes[:5]}")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def _train(kind: str, x: np.ndarray, y: np.ndarray, idx: np.ndarray, settings, seed: int):
    """The benchmark's MLP probe (:mod:`mtdp.mlp_probe`) fitted on rows ``idx``, stopped early
    on a seeded inner validation split of them: ``(model, data)``."""
    from .mlp_probe import inner_split, train_mlp

    fit_idx, val_idx = inner_split(idx, y, kind, settings.val_fraction, seed)
    model, data, _ = train_mlp(x, y, kind, fit_idx, val_idx, settings, seed)
    return model, data


def _outputs(kind: str, model, data, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (class indices, 0/1 terms at 0.5, or values) and probabilities of rows
    ``idx`` (None for regression)."""
    from .mlp_probe import probabilities

    out = data.outputs(model, data.feats(idx))
    if kind == "regression":
        return out, None
    proba = probabilities(kind, out)
    return ((proba >= 0.5).astype(np.int64) if kind == "multilabel" else proba.argmax(1)), proba


def _scores(kind: str, y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None
            ) -> dict[str, float]:
    """A fold's scores (the benchmark's primary metric among them: accuracy, Fmax, ρ)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import accuracy_score, f1_score, r2_score

    from .fmax import fmax

    if kind == "regression":
        return {"spearman": float(spearmanr(y, pred).statistic), "r2": float(r2_score(y, pred))}
    if kind == "multilabel":
        return {"fmax": fmax(y, proba)[0],
                "f1_micro": float(f1_score(y, pred, average="micro", zero_division=0))}
    return {"accuracy": float(accuracy_score(y, pred)),
            "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0))}


def _folds(n: int, kind: str, y: np.ndarray, groups: list[str] | None, k: int, seed: int):
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

    if groups is not None:
        if len(set(groups)) < k:
            raise ValueError(f"--folds {k} needs at least {k} groups; the labels have "
                             f"{len(set(groups))}")
        return list(GroupKFold(n_splits=k).split(np.zeros(n), groups=groups))
    if kind in ("binary", "multiclass") and np.bincount(y).min() >= k:
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y))
    return list(KFold(k, shuffle=True, random_state=seed).split(np.zeros(n)))


def fit_predictor(embeddings: str | Path, labels: str | Path, out: str | Path, *,
                  kind: str = "auto", label_column: str = "label", id_column: str = "id",
                  group_column: str | None = None, folds: int = 5, hidden: int = 256,
                  seed: int = 0, groups: dict[str, str] | None = None,
                  grouped_by: str | None = None) -> PredictorCard:
    """Cross-validate, then fit on every labelled protein and save to ``out`` (a new folder):
    ``model.pt`` (the probe's weights and standardisation) and ``predictor.json`` (this
    card, with the CV scores ± SE).

    Raises:
        ValueError: labelled ids missing from the embeddings (named), too few proteins or
            groups, an existing non-empty ``out``.
    """
    from .mlp_probe import MLPSettings

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose a new directory")
    if folds < 2:
        raise ValueError(f"--folds must be >= 2, got {folds}")
    lab = read_labels(labels, label_column, id_column, group_column)
    if groups is not None and group_column is None:  # e.g. MMseqs2 clusters (mtdp.clusters)
        lost = [pid for pid in lab.ids if pid not in groups]
        if lost:
            raise ValueError(f"{len(lost)} labelled id(s) of {labels} have no sequence to "
                             f"cluster, e.g. {lost[:3]}")
        lab.groups = [groups[pid] for pid in lab.ids]
    ids, x = read_embeddings(embeddings)
    row = {pid: i for i, pid in enumerate(ids)}
    missing = [pid for pid in lab.ids if pid not in row]
    if missing:
        raise ValueError(f"{len(missing)} labelled id(s) of {labels} have no embedding in "
                         f"{embeddings}, e.g. {missing[:3]}: embed them first")
    x = x[[row[pid] for pid in lab.ids]].astype(np.float32)
    kind = infer_kind(lab.values) if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be auto or one of {KINDS}, not {kind!r}")
    y, classes = _targets(kind, lab.values)
    settings = MLPSettings(hidden=hidden)
    per_fold: list[dict[str, float]] = []
    for k, (train, test) in enumerate(_folds(len(y), kind, y, lab.groups, folds, seed)):
        model, data = _train(kind, x, y, np.sort(train), settings, seed + k)
        per_fold.append(_scores(kind, y[test], *_outputs(kind, model, data, test)))
    cv = {"folds": folds, "grouped_by": group_column or grouped_by, "per_fold": per_fold}
    for metric in per_fold[0]:
        vals = np.array([f[metric] for f in per_fold])
        cv[metric] = {"mean": float(vals.mean()),
                      "se": float(vals.std(ddof=1) / np.sqrt(len(vals)))}
    model, data = _train(kind, x, y, np.arange(len(y)), settings, seed)
    card = PredictorCard(kind, classes, int(x.shape[1]), embedding_model(embeddings) or "",
                         len(y), hidden, cv)
    out.mkdir(parents=True, exist_ok=True)
    _save(out / MODEL_FILE, model, data, settings)
    with atomic_open(out / CARD_FILE) as fh:
        fh.write(json.dumps(asdict(card), indent=2))
    return card


def apply_predictor(predictor: str | Path, embeddings: str | Path, output: str | Path
                    ) -> int:
    """Predict every protein of ``embeddings`` into a TSV (``id``, ``prediction`` and, for
    classifiers, one probability column per class); returns the rows written.

    Raises:
        ValueError: the embeddings' dimension or model differ from the predictor's.
    """
    d = Path(predictor)
    if not (d / CARD_FILE).is_file():
        raise ValueError(f"{d} is not a predictor folder (no {CARD_FILE}; made by "
                         "`mtdp predict fit`)")
    card = PredictorCard(**json.loads((d / CARD_FILE).read_text()))
    ids, x = read_embeddings(embeddings)
    if x.shape[1] != card.dim:
        raise ValueError(f"{embeddings}: {x.shape[1]}-d embeddings, the predictor was fitted on "
                         f"{card.dim}-d ones ({card.embedding_model or 'unknown model'})")
    model_name = embedding_model(embeddings) or ""
    if card.embedding_model and model_name and model_name != card.embedding_model:
        raise ValueError(f"{embeddings} holds {model_name} embeddings; the predictor was "
                         f"fitted on {card.embedding_model} ones: embed with that model")
    if not (d / MODEL_FILE).is_file():
        raise ValueError(f"{d} has no {MODEL_FILE} (a predictor from an older mtdp, or an "
                         "incomplete folder): fit it again with `mtdp predict fit`")
    model, data = _load(d / MODEL_FILE, card, x)
    pred, proba = _outputs(card.kind, model, data, np.arange(len(x)))
    with atomic_open(output) as fh:
        head = ["id", "prediction"] + ([f"p_{c}" for c in card.classes] if proba is not None
                                       else [])
        fh.write("\t".join(head) + "\n")
        for i, pid in enumerate(ids):
            if card.kind == "regression":
                label = f"{float(pred[i]):.6g}"
            elif card.kind == "multilabel":
                label = ";".join(c for c, on in zip(card.classes, pred[i]) if on)
            else:
                label = card.classes[int(pred[i])]
            cells = [pid, label] + ([f"{p:.4f}" for p in proba[i]] if proba is not None else [])
            fh.write("\t".join(cells) + "\n")
    return len(ids)


def _save(path: Path, model, data, settings) -> None:
    """The fitted probe: weights, the features' (and targets') standardisation, its shape."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"state": model.state_dict(), "mean": torch.from_numpy(data.mean),
                    "std": torch.from_numpy(data.std),
                    "target": torch.tensor([data.y_mean, data.y_std]),
                    "out": int(model.net[-1].out_features),
                    "dropout": settings.dropout}, tmp)


def _load(path: Path, card: PredictorCard, x: np.ndarray):
    """The saved probe and a :class:`mtdp.mlp_probe.ProbeData` standardising ``x`` as in
    training."""
    import torch

    from .mlp_probe import MLPProbe, ProbeData

    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = MLPProbe(card.dim, card.hidden, int(saved["out"]), float(saved["dropout"]))
    model.load_state_dict(saved["state"])
    y_mean, y_std = (float(v) for v in saved["target"])
    data = ProbeData(card.kind, np.zeros(len(x)), np.asarray(x, dtype=np.float32),
                     saved["mean"].numpy(), saved["std"].numpy(), y_mean, y_std)
    return model.eval(), data


def log_predictor(card: PredictorCard, folder: str | Path, *, embeddings: str | Path,
                  labels: str | Path, seed: int, experiment: str = "mtdp") -> str:
    """One MLflow run for a fitted predictor, as the benchmark logs its probes: parameters,
    CV means ± SE and per-fold scores, the card as an artifact. Returns the run id."""
    import mlflow

    from .tracking import setup_mlflow

    setup_mlflow(experiment)
    with mlflow.start_run(run_name=f"predictor-{Path(folder).name}") as run:
        mlflow.set_tags({"mtdp.kind": "predictor", "embedding_model": card.embedding_model})
        mlflow.log_params({"kind": card.kind, "classes": len(card.classes), "dim": card.dim,
                           "proteins": card.proteins, "hidden": card.hidden, "seed": seed,
                           "folds": card.cv.get("folds"), "grouped_by": card.cv.get("grouped_by"),
                           "embeddings": str(embeddings), "labels": str(labels),
                           "output": str(Path(folder).resolve())})
        metrics = {}
        for name, value in card.cv.items():
            if isinstance(value, dict):
                metrics[f"cv_{name}_mean"], metrics[f"cv_{name}_se"] = value["mean"], value["se"]
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if math.isfinite(v)})
        for k, fold in enumerate(card.cv.get("per_fold", [])):
            mlflow.log_metrics({f"fold_{m}": float(v) for m, v in fold.items()
                                if math.isfinite(v)}, step=k)
        mlflow.log_artifact(str(Path(folder) / CARD_FILE))
        return run.info.run_id
