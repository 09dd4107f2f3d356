"""Scoring the selector study's students (:mod:`.selector_study`), quickly and paired.

* **tasks**: per fold of each task's homology folds (the same folds for every model), a linear
  probe on standardised embeddings — L2 logistic regression (C = 0.1) for classes, ridge
  (alpha = 10) for regression and, one column per term, for GO — scored with the task's
  primary metric; membrane is scored on the localization proteins (one embedding for both);
* **gain capture** against UniRep-1900 and amino-acid composition on the same folds
  (references embedded at full length, cached in the benchmark's store);
* **r2**: how much of UniRep-1900's ``h_avg`` a ridge map (5-fold cross-validated) recovers
  from the student's embedding of the held-out pool proteins, per protein group of the set;
* **rates**: per teacher and group, how often the trained selector picks it (``rl``: the final
  policy's probabilities on held-out proteins; other modes: their rule).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mtdp.embed import embed_sequences
from mtdp.evaluate.metrics import compute_metrics
from mtdp.evaluate.probes import task_folds

def load_tasks(cfg) -> list:
    """The study's tasks (seeded subsets); ``membrane`` on the localization proteins."""
    from mtdp.evaluate.tasks import load_task

    names = [x.strip() for x in cfg.tasks.split(",") if x.strip()]
    out, loc = [], None
    for name in names:
        if name == "membrane" and "localization" in names:
            loc = loc or load_task("localization", max_proteins=cfg.task_proteins, seed=42,
                                   min_class_count=cfg.folds)
            out.append(_membrane_of(loc))
            continue
        t = load_task(name, max_proteins=cfg.task_proteins, seed=42, min_class_count=cfg.folds)
        loc = t if name == "localization" else loc
        out.append(t)
    return out


def _membrane_of(loc):
    """The membrane task on the localization task's proteins (DeepLoc 2.0's ``membrane``
    column by accession; classes as the membrane task's)."""
    from mtdp.evaluate.pools import read_deeploc2

    table = read_deeploc2((0, 1, 2, 3, 4)).drop_duplicates("accession").set_index("accession")
    labels = table.loc[loc.ids].membrane.to_numpy(float).astype(np.int64)
    return dataclasses.replace(loc, name="membrane", kind="binary",
                               classes=["soluble", "membrane"], labels=labels,
                               description="membrane-bound vs water-soluble (DeepLoc 2.0), on "
                                           "the localization proteins")


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
        if task.kind in ("regression", "multilabel"):
            pred = Ridge(alpha=10.0).fit(Z[train], task.labels[train]).predict(Z[test])
            if task.kind == "multilabel":
                pred = np.clip(pred, 0.0, 1.0)
        else:
            model = LogisticRegression(C=0.1, max_iter=2000).fit(Z[train], task.labels[train])
            pred = np.zeros((len(test), int(task.labels.max()) + 1))
            pred[:, model.classes_] = model.predict_proba(Z[test])
        out.append(float(compute_metrics(task.kind, task.labels[test], pred)
                         [task.primary_metric]))
    return out


class Evaluator:
    """Scores students and references against one pool and task set."""

    def __init__(self, cfg, tasks: list, pool, log=print) -> None:
        self.cfg, self.tasks, self.pool, self.log = cfg, tasks, pool, log
        self.folds = {t.name: task_folds(t, "homology", cfg.folds, 42)[0] for t in tasks}
        self.scored = pool.where("scored")
        self.teacher = cfg.teacher_names[0]
        y = pool.protein[self.teacher][self.scored]
        self.r2_target = (y - y.mean(0)) / y.std(0).clip(1e-6)
        self.refs: dict[str, dict[str, list[float]]] = {}

    def _task_scores(self, embed) -> dict[str, list[float]]:
        """Fold scores per task; tasks sharing their proteins share one embedding."""
        vectors: dict[int, np.ndarray] = {}
        out = {}
        for t in self.tasks:
            key = id(t.sequences)
            if key not in vectors:
                vectors[key] = embed(t.sequences)
            out[t.name] = linear_fold_scores(vectors[key], t, self.folds[t.name])
        return out

    def r2(self, xv: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
        """Per group: R² of UniRep-1900 (standardised) from cross-validated ridge predictions."""
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import KFold, cross_val_predict

        Z = (xv - xv.mean(0)) / xv.std(0).clip(1e-6)
        pred = cross_val_predict(Ridge(alpha=10.0), Z, self.r2_target,
                                 cv=KFold(5, shuffle=True, random_state=0))
        out = {}
        for g, mask in groups.items():
            m = mask[self.scored]
            res = ((self.r2_target[m] - pred[m]) ** 2).sum()
            tot = ((self.r2_target[m] - self.r2_target[m].mean(0)) ** 2).sum()
            out[g] = float(1 - res / tot) if m.sum() > 1 else float("nan")
        return out

    def _gain(self, scores: dict[str, list[float]]) -> dict[str, list[float]]:
        from mtdp.evaluate.transfer import gain_capture

        return {t: list(gain_capture(s, self.refs[self.teacher][t], self.refs["aac"][t]))
                for t, s in scores.items()}

    def _student(self, student, groups: dict[str, np.ndarray]) -> dict[str, Any]:
        from mtdp.models.student import StudentEmbedder

        emb = StudentEmbedder(student.eval())
        cap = self.cfg.task_max_len
        res: dict[str, Any] = {"tasks": self._task_scores(
            lambda s: embed_sequences(emb, [x[:cap] for x in s]))}
        res["gain_capture"] = self._gain(res["tasks"])
        res["r2"] = self.r2(embed_sequences(emb, list(self.pool.seqs[self.scored])), groups)
        return res

    def score(self, dist, stats, rows: dict, ts) -> dict[str, Any]:
        """Everything for one trained student (its distiller, stats, rows and teacher set)."""
        res = self._student(dist.student, ts.groups)
        res["rates"] = selection_rates(dist, rows, stats, self.scored, ts.groups)
        return res

    def references(self) -> dict[str, dict[str, Any]]:
        """The best teacher and amino-acid composition on the same probes (full length, cached
        in the benchmark's store)."""
        from mtdp.evaluate.cache import cached_embeddings
        from mtdp.models.registry import load_embedder

        out = {}
        everyone = {"all": np.ones(len(self.pool.ids), dtype=bool)}
        for spec in (self.teacher, "aac"):
            model = load_embedder(spec, device="cpu")
            self.refs[spec] = self._task_scores(
                lambda s: cached_embeddings(model, _as_task(self.tasks, s),
                                            self.cfg.reference_store)[0])
            xv = embed_sequences(model, list(self.pool.seqs[self.scored]))
            out[spec] = {"tasks": self.refs[spec], "r2": self.r2(xv, everyone)}
            self.log(f"[study] reference {spec}: " + ", ".join(
                f"{k} {np.mean(v):.3f}" for k, v in self.refs[spec].items()))
        return out

    def random_init(self) -> dict[str, Any]:
        """The untrained student (every run's start point)."""
        from mtdp.distill import DistillConfig
        from mtdp.distill.batches import TeacherStats
        from mtdp.distill.core import build_student
        from .selector_train import student_config

        cfg = DistillConfig(**student_config(self.cfg, ["t"], {}))
        model = build_student(cfg, TeacherStats.placeholder({"t": 8}), 1000)
        return self._student(model, {"all": np.ones(len(self.pool.ids), dtype=bool)})


def _as_task(tasks: list, seqs: list[str]):
    """The task whose sequence list is ``seqs`` (the cache is keyed by task data)."""
    return next(t for t in tasks if t.sequences is seqs)


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
            b = make_batch(take_rows(rows, idx[i:i + batch]), stats, mlm_prob=0.15, seed=0)
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
