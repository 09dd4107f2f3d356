"""The MLP probe on frozen per-protein embeddings — one implementation for the benchmark's
probes (:mod:`mtdp.evaluate.probes`) and for predictors on a user's labels
(:mod:`mtdp.predictor`), so a predictor's cross-validated score is the benchmark's.

Linear → GELU → dropout → linear; features (and regression targets) standardised with the
rows it is fitted on; AdamW; early stopping on an inner validation split's loss (or on a score
the caller gives), keeping the best epoch's weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import Config, option


@dataclass
class MLPSettings(Config):
    """The probe's hyper-parameters (the benchmark's fixed default)."""

    hidden: int = option(256, ge=1, help="probe hidden layer width")
    lr: float = option(1e-3, gt=0.0, help="AdamW learning rate")
    weight_decay: float = option(1e-2, ge=0.0, help="AdamW weight decay")
    dropout: float = option(0.1, ge=0.0, lt=1.0, help="dropout after the hidden layer")
    batch_size: int = option(128, ge=1, help="probe mini-batch size")
    max_epochs: int = option(40, ge=1, help="maximum probe epochs per fold")
    patience: int = option(5, ge=1, help=(
        "early stopping: epochs without improvement of the selection score"))
    val_fraction: float = option(0.1, gt=0.0, lt=1.0, help=(
        "inner validation share of the training folds (protocol inner-val)"))


class MLPProbe(nn.Module):
    """Linear → GELU → dropout → linear."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def inner_split(train_idx: np.ndarray, labels: np.ndarray, kind: str, fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training-fold indices into (inner train, inner validation), stratified for
    classification when every class has at least 2 members."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    strat = None
    if kind in ("binary", "multiclass"):
        _, counts = np.unique(labels[train_idx], return_counts=True)
        # Stratifying needs 2+ members per class and room for every class in the split.
        if counts.min() >= 2 and int(fraction * len(train_idx)) >= len(counts):
            strat = labels[train_idx]
    tr, va = train_test_split(train_idx, test_size=fraction, random_state=seed, stratify=strat)
    return np.sort(tr), np.sort(va)


def loss_fn(kind: str) -> nn.Module:
    if kind in ("binary", "multiclass"):
        return nn.CrossEntropyLoss()
    if kind == "multilabel":
        return nn.BCEWithLogitsLoss()
    return nn.MSELoss()


def out_dim(kind: str, labels: np.ndarray) -> int:
    if kind in ("binary", "multiclass"):
        return int(labels.max()) + 1
    if kind == "multilabel":
        return labels.shape[1]
    return 1


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


@dataclass
class ProbeData:
    """Standardised features and targets (statistics from the fitted rows only)."""

    kind: str
    labels: np.ndarray
    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    y_mean: float = 0.0
    y_std: float = 1.0

    @classmethod
    def fit(cls, X: np.ndarray, labels: np.ndarray, kind: str, fit_idx: np.ndarray
            ) -> "ProbeData":
        x_all = np.asarray(X, dtype=np.float32)
        mean = x_all[fit_idx].mean(axis=0)
        std = x_all[fit_idx].std(axis=0)
        std[std < 1e-6] = 1.0  # constant features (e.g. absent k-mers) stay 0 instead of NaN
        data = cls(kind, labels, x_all, mean, std)
        if kind == "regression":
            data.y_mean = float(labels[fit_idx].mean())
            data.y_std = float(labels[fit_idx].std()) or 1.0
        return data

    def feats(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((self.x[idx] - self.mean) / self.std)

    def targets(self, idx: np.ndarray) -> torch.Tensor:
        y = self.labels[idx]
        if self.kind in ("binary", "multiclass"):
            return torch.from_numpy(y.astype(np.int64))
        if self.kind == "regression":
            return torch.from_numpy(((y - self.y_mean) / self.y_std).astype(np.float32)
                                    ).unsqueeze(1)
        return torch.from_numpy(y.astype(np.float32))

    def outputs(self, model: nn.Module, x: torch.Tensor) -> np.ndarray:
        """Logits (classes), or predictions in label units (regression)."""
        out = predict(model, x).numpy()
        return out.reshape(-1) * self.y_std + self.y_mean if self.kind == "regression" else out


def fit(model: nn.Module, data: ProbeData, fit_idx: np.ndarray, val_idx: np.ndarray,
        settings: MLPSettings, seed: int,
        score: Callable[[nn.Module], float] | None = None) -> tuple[int, int, float]:
    """Train with early stopping on the ``val_idx`` loss (or on ``score(model)``, higher is
    better, where given); leaves the best epoch's weights in ``model``. Returns
    ``(best_epoch, epochs_run, best_val_loss)``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                            weight_decay=settings.weight_decay)
    loss = loss_fn(data.kind)
    x_fit, y_fit = data.feats(fit_idx), data.targets(fit_idx)
    x_val = data.feats(val_idx) if len(val_idx) else None
    y_val = data.targets(val_idx) if len(val_idx) else None
    best_score, best_epoch, best_state, stale, epoch = -np.inf, 0, None, 0, 0
    best_val_loss = float("nan")
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        perm = torch.randperm(len(x_fit), generator=gen)
        for i in range(0, len(perm), settings.batch_size):
            b = perm[i:i + settings.batch_size]
            if len(b) < 2 and len(perm) > 1:
                continue  # a batch of one gives no useful gradient
            opt.zero_grad(set_to_none=True)
            loss(model(x_fit[b]), y_fit[b]).backward()
            opt.step()
        if score is None:
            assert x_val is not None and y_val is not None
            val_loss = float(loss(predict(model, x_val), y_val))
            current = -val_loss
        else:
            current, val_loss = score(model), float("nan")
            current = -np.inf if np.isnan(current) else current
        if current > best_score:
            best_score, best_epoch, stale, best_val_loss = current, epoch, 0, val_loss
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return best_epoch, epoch, best_val_loss


def train_mlp(X: np.ndarray, labels: np.ndarray, kind: str, fit_idx: np.ndarray,
              val_idx: np.ndarray, settings: MLPSettings, seed: int,
              score: Callable[[nn.Module, "ProbeData"], float] | None = None
              ) -> tuple[MLPProbe, ProbeData, tuple[int, int, float]]:
    """A probe fitted on ``fit_idx`` (standardised there), stopped early on ``val_idx``: the
    model, its data and ``(best_epoch, epochs_run, best_val_loss)``."""
    data = ProbeData.fit(X, labels, kind, fit_idx)
    torch.manual_seed(seed)
    model = MLPProbe(X.shape[1], settings.hidden, out_dim(kind, labels), settings.dropout)
    select = (lambda m: score(m, data)) if score is not None else None
    return model, data, fit(model, data, fit_idx, val_idx, settings, seed, select)


def probabilities(kind: str, logits: np.ndarray) -> np.ndarray:
    """Class probabilities (softmax) or per-term probabilities (sigmoid) from logits."""
    z = np.asarray(logits, dtype=np.float64)
    if kind == "multilabel":
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
