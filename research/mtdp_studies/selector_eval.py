"""Scoring the selector study's students (:mod:`.selector_study`), quickly and paired.

* **tasks**: per fold of each task's homology folds (the same folds for every model), a linear
  probe on standardised embeddings — L2 logistic regression (C = 0.1) for classes, ridge
  (alpha = 10) for regression — scored with the task's primary metric;
* **val**: the pool's held-out part, 5-fold logistic probes of DeepLoc localization and
  membrane labels (mean accuracy): what chooses the default selector, never the test tasks;
* **r2**: how much of UniRep-1900 a ridge map (5-fold, cross-validated predictions) recovers
  from the embedding of the pool's held-out proteins, per protein group of the teacher set;
* **rates**: per teacher and group, how often the trained selector picks it on the training
  proteins (``rl``: the final policy's probabilities; other modes: their rule).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from mtdp.evaluate.metrics import compute_metrics
from mtdp.evaluate.probes import task_folds
from mtdp.embed import embed_sequences
from mtdp.io import cached_array


def _scaled(X: np.ndarray, fit: np.ndarray) -> np.ndarray:
    mu, sd = X[fit].mean(0), X[fit].std(0)
    return (X - mu) / np.where(sd > 1e-8, sd, 1.0)


def linear_fold_scores(X: np.ndarray, task, folds: list[np.ndarray]) -> list[float]:
    """The task's primary metric on each test fold (probe fitted on the other folds)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    out = []
    for k, test in enumerate(folds):
        train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != k]))
        Z = _scaled(X, train)
        if task.kind == "regression":
            pred = Ridge(alpha=10.0).fit(Z[train], task.labels[train]).predict(Z[test])
        else:
            model = LogisticRegression(C=0.1, max_iter=2000).fit(Z[train], task.labels[train])
            proba = np.zeros((len(test), int(task.labels.max()) + 1))
            proba[:, model.classes_] = model.predict_proba(Z[test])
            pred = proba
        out.append(float(compute_metrics(task.kind, task.labels[test], pred)
                         [task.primary_metric]))
    return out


class Evaluator:
    """Scores embeddings, students and references against one pool and task set."""

    def __init__(self, cfg, tasks: list, pool, cache: Path, log=print) -> None:
        self.cfg, self.tasks, self.pool, self.cache, self.log = cfg, tasks, pool, cache, log
        self.folds = {t.name: task_folds(t, "homology", cfg.folds, 42)[0] for t in tasks}
        self.val_idx = pool.scored
        best = cfg.names("teachers")[0]
        y = pool.teach[best][self.val_idx]
        self.r2_target = (y - y.mean(0)) / y.std(0).clip(1e-6)

    def scores(self, embed) -> dict[str, Any]:
        """``embed(sequences) -> [N, d]`` on every task and on the pool's held-out part."""
        tasks = {t.name: linear_fold_scores(embed(t.sequences), t, self.folds[t.name])
                 for t in self.tasks}
        xv = embed([self.pool.seqs[i] for i in self.val_idx])
        return {"tasks": tasks, "val": self.val_score(xv), "xv": xv}

    def val_score(self, xv: np.ndarray) -> float:
        """Mean 5-fold accuracy of localization and membrane probes on the held-out pool."""
        from mtdp.evaluate.probes import linear_probe_cv

        loc = self.pool.labels[self.val_idx]
        keep = np.isin(loc, [c for c, n in zip(*np.unique(loc, return_counts=True)) if n >= 5])
        return float(np.mean([linear_probe_cv(xv[keep], loc[keep]),
                              linear_probe_cv(xv, self.pool.membrane[self.val_idx].astype(int))]))

    def r2(self, xv: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
        """Per group: R² of UniRep-1900 (standardised) from cross-validated ridge predictions."""
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import KFold, cross_val_predict

        Z = (xv - xv.mean(0)) / xv.std(0).clip(1e-6)
        pred = cross_val_predict(Ridge(alpha=10.0), Z, self.r2_target,
                                 cv=KFold(5, shuffle=True, random_state=0))
        out = {}
        for g, mask in groups.items():
            m = mask[self.val_idx]
            res = ((self.r2_target[m] - pred[m]) ** 2).sum()
            tot = ((self.r2_target[m] - self.r2_target[m].mean(0)) ** 2).sum()
            out[g] = float(1 - res / tot) if m.sum() > 1 else float("nan")
        return out

    def score(self, dist, rows: dict, stats, ts) -> dict[str, Any]:
        """Everything for one trained student (its distiller, rows and teacher set)."""
        from mtdp.models.student import StudentEmbedder

        emb = StudentEmbedder(dist.student.eval())
        res = self.scores(lambda s: embed_sequences(emb, s))
        res["r2"] = self.r2(res.pop("xv"), ts.groups)
        res["rates"] = selection_rates(dist, rows, stats, self.pool.train, ts.groups)
        return res

    def _cached(self, spec: str, name: str, seqs: list[str]) -> np.ndarray:
        from mtdp.models.registry import load_embedder

        digest = hashlib.sha256("\n".join(seqs).encode()).hexdigest()[:12]
        tag = f"{spec.replace(':', '_')}-{name}-{self.cfg.task_max_len}-{digest}"
        return cached_array(self.cache / f"ref-{tag}.npy", lambda: embed_sequences(
            load_embedder(spec, device="cpu"), seqs, max_len=self.cfg.task_max_len))

    def references(self) -> dict[str, dict[str, Any]]:
        """The best real teacher and amino-acid composition on the same probes (cached)."""
        out = {}
        for spec in (self.cfg.names("teachers")[0], "aac"):
            vals = [self.pool.seqs[i] for i in self.val_idx]
            tasks = {t.name: linear_fold_scores(self._cached(spec, t.name, t.sequences), t,
                                                self.folds[t.name]) for t in self.tasks}
            xv = self._cached(spec, "pool-val", vals)
            out[spec] = {"tasks": tasks, "val": self.val_score(xv),
                         "r2": self.r2(xv, {"all": np.ones(len(self.pool.seqs), dtype=bool)})}
            self.log(f"[study] reference {spec}: " + ", ".join(
                f"{k} {np.mean(v):.3f}" for k, v in tasks.items()))
        return out

    def random_init(self) -> dict[str, Any]:
        """The untrained student (the start point of every run)."""
        from mtdp.distill import DistillConfig
        from mtdp.distill.batches import TeacherStats
        from mtdp.distill.core import build_student
        from mtdp.models.student import StudentEmbedder

        cfg = DistillConfig(data="-", preset=self.cfg.preset, dropout=0.0, seed=self.cfg.seed)
        model = build_student(cfg, TeacherStats.placeholder({"t": 8}), self.cfg.max_len)
        emb = StudentEmbedder(model.eval())
        res = self.scores(lambda s: embed_sequences(emb, s))
        res["r2"] = self.r2(res.pop("xv"), {"all": np.ones(len(self.pool.seqs), dtype=bool)})
        return res


def selection_rates(dist, rows: dict, stats, idx: np.ndarray, groups: dict[str, np.ndarray],
                    batch: int = 64) -> dict[str, dict[str, float]]:
    """Per teacher and protein group: the trained selector's selection rate on ``idx``."""
    import torch

    from mtdp.distill.batches import make_batch
    from mtdp.distill.local import take_rows

    sel = dist.selector
    picks = []
    dist.student.eval()
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            b = make_batch(take_rows(rows, idx[i:i + batch]), stats, mlm_prob=dist.cfg.mlm_prob,
                           seed=0, device=dist.device)
            if sel.kind == "rl":
                res = dist.forward(b, model=dist.student)
                picks.append(sel.probabilities(sel.state(res["pooled"], res["kd"], b["lengths"])))
            elif sel.kind == "random":
                picks.append(torch.full((len(b["ids"]), len(sel.teachers)),
                                        1.0 / len(sel.teachers)))
            else:
                kd = torch.zeros(len(b["ids"]), len(sel.teachers))
                picks.append(sel.select(kd, kd, b["lengths"], b.get("oracle")))
    p = torch.cat(picks).float().cpu().numpy()
    return {t: {g: float(p[m[idx], k].mean()) for g, m in groups.items()}
            for k, t in enumerate(sel.teachers)}
