"""Training one student of the selector study (:mod:`.selector_study`) on a teacher set: the
transfer recipe's student and loss (:data:`mtdp_studies.transfer_arms.BASE`), every teacher
with per-window and per-protein targets, one pass over the training proteins in a seeded
order shared by every mode."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .selector_study import WINDOW


def student_config(cfg, teachers: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """DistillConfig fields of a study student (the arms' recipe at the study's steps)."""
    from .transfer_arms import BASE

    out = {**BASE, "residue_teachers": list(teachers), "lr": cfg.lr,
           "batch_size": cfg.batch_size, "seed": cfg.seed, "selector_warmup_steps": 20,
           "reward_batch_size": 8, "data": "-", "mlflow": False}
    return {**out, **overrides}


def teacher_stats(ts, train: np.ndarray):
    """Standardisation statistics of a teacher set on the training proteins."""
    import torch

    from mtdp.distill.batches import ResidueStats, TeacherStats

    names = list(ts.protein)
    mean = [torch.tensor(ts.protein[k][train].mean(0), dtype=torch.float32) for k in names]
    std = [torch.tensor(ts.protein[k][train].std(0), dtype=torch.float32) for k in names]
    residues = {}
    for k in names:
        w = ts.windows[k][train].reshape(-1, ts.windows[k].shape[-1]).astype(np.float32)
        residues[k] = ResidueStats(f"{k}#windows", torch.tensor(w.mean(0)),
                                   torch.tensor(w.std(0)), WINDOW)
    return TeacherStats(names, names, [ts.protein[k].shape[1] for k in names], mean, std,
                        residues)


def train_student(cfg, pool, ts, overrides: dict[str, Any], log=print):
    """One student; returns ``(distiller, stats, rows)``."""
    from mtdp.distill import DistillConfig
    from mtdp.distill.batches import GOOD_COLUMN, make_batch
    from mtdp.distill.core import new_distiller
    from mtdp.distill.local import take_rows

    train, credit = pool.where("train"), pool.where("credit")
    stats = teacher_stats(ts, train)
    rows: dict[str, Any] = {"id": pool.ids, "sequence": pool.seqs, GOOD_COLUMN: ts.good,
                            **ts.protein,
                            **{f"{k}#windows": v for k, v in ts.windows.items()}}
    dcfg = DistillConfig(**student_config(cfg, list(ts.protein), overrides))
    dist = new_distiller(dcfg, stats, 1000, cfg.steps)
    batches = [make_batch(take_rows(rows, credit[i:i + dcfg.reward_batch_size]), stats,
                          mlm_prob=dcfg.mlm_prob, seed=cfg.seed + 7)
               for i in range(0, len(credit), dcfg.reward_batch_size)]
    dist.reward_batch = make_batch(take_rows(rows, credit[:32]), stats, mlm_prob=dcfg.mlm_prob,
                                   seed=cfg.seed + 7)
    dist.credit_batches = batches
    order = np.random.default_rng(cfg.seed).permutation(train)
    t0, b = time.perf_counter(), cfg.batch_size
    for step in range(cfg.steps):
        at = (step * b) % (len(order) - b + 1)
        m = dist.train_step(make_batch(take_rows(rows, order[at:at + b]), stats,
                                       mlm_prob=dcfg.mlm_prob, seed=cfg.seed))
        if (step + 1) % 100 == 0:
            log(f"[study]   step {step + 1}/{cfg.steps} loss {m['train/loss']:.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return dist, stats, rows
