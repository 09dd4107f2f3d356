"""Quick sweep of distillation settings for the UniRep preset (in-process: no Ray, no MLflow).

Distils the ``tiny`` student from UniRep-1900 + UniRep-256 on a DeepLoc 2.0 pool (partitions
0-3, truncated to ``max_len``) with the in-process loop (:func:`mtdp.distill.local.
train_epochs`), then scores each student on 800 held-out proteins of partition 4 (≤ 512
residues): 5-fold logistic-regression probes (:func:`mtdp.evaluate.probes.linear_probe_cv`)
for 10-class localization and membrane vs soluble, plus the cosine between each teacher
head's output and the real (standardised) teacher embedding. Teacher embeddings are cached as
``.npy`` in the cache folder. This is how the preset's default training settings were picked;
the preset itself is the real, Tune-probed benchmark.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtdp.evaluate import pools
from mtdp.evaluate.probes import linear_probe_cv
from mtdp.distill import DistillConfig
from mtdp.distill.batches import ResidueStats, TeacherStats
from mtdp.distill.core import new_distiller
from mtdp.distill.local import train_epochs
from mtdp.embed import embed_sequences
from mtdp.io import cached_array
from mtdp.losses import standardise
from mtdp.models.registry import load_embedder
from mtdp.models.student import StudentEmbedder
from mtdp.models.teachers import load_teacher
from mtdp.sequences import prepare
from mtdp.teacher_data import residue_column
from mtdp.tokenizer import ResidueTokenizer

TEACHERS = ["unirep1900", "unirep256"]
#: A sweep entry's keys and defaults (the preset's default training settings).
DEFAULTS = {"selector": "uniform", "kd": "cosine", "epochs": 10, "preset": "tiny", "lr": 3e-3,
            "bs": 8, "kd_w": 1.0, "mlm_w": 0.1, "temp": 1.0, "dropout": 0.0}


@dataclass
class SweepData:
    """The pool, the held-out evaluation proteins, their teacher embeddings and labels."""

    pool_ids: np.ndarray
    pool: list[str]
    evals: list[str]
    teach: dict[str, np.ndarray]
    teach_eval: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    cache: Path
    max_len: int

    @classmethod
    def load(cls, pool: int, max_len: int, cache: str | Path) -> "SweepData":
        df_pool = pools.sample_proteins(pool, 0, pools.POOL_PARTITIONS)
        ev = pools.sample_proteins(800, 1)
        pseq = [prepare(s, max_len=max_len) for s in df_pool.sequence]
        eseq = [prepare(s, max_len=512) for s in ev.sequence]
        folder = Path(cache)
        folder.mkdir(parents=True, exist_ok=True)
        data = cls(df_pool.accession.values, pseq, eseq, {}, {},
                   {"localization": np.asarray(ev.label.astype(str).tolist()),
                    "membrane": np.asarray(ev.membrane.astype(float).astype(int).tolist())},
                   folder, max_len)
        data.teach = {t: data.cached(f"pool_{t}_{pool}_{max_len}", t, pseq) for t in TEACHERS}
        data.teach_eval = {t: data.cached(f"eval_{t}", t, eseq) for t in TEACHERS}
        return data

    def cached(self, name: str, teacher: str, seqs: list[str]) -> np.ndarray:
        return cached_array(self.cache / f"{name}.npy",
                            lambda: embed_sequences(load_teacher(teacher), seqs))

    def residues(self, teacher: str) -> np.ndarray:
        """Per-residue teacher states of the pool, concatenated in pool order (float32;
        cached on disk as float16)."""
        def compute() -> np.ndarray:
            _, res = embed_sequences(load_teacher(teacher), self.pool, per_residue=True)
            return np.concatenate(res).astype(np.float16)
        return cached_array(self.cache / f"pool_res_{teacher}_{len(self.pool)}_{self.max_len}"
                            ".npy", compute).astype(np.float32)

    def probe(self, x: np.ndarray) -> dict[str, float]:
        return {k: round(linear_probe_cv(x, y), 3) for k, y in self.labels.items()}


def baselines(data: SweepData) -> dict[str, dict[str, float]]:
    """Probe scores of the teachers and of amino-acid composition."""
    out = {t: data.probe(data.teach_eval[t]) for t in TEACHERS}
    out["aac"] = data.probe(embed_sequences(load_embedder("aac"), data.evals))
    return out


def _setup(data: SweepData, kw: dict[str, Any]):
    cfg = DistillConfig(preset=kw["preset"], dropout=kw["dropout"], selector=kw["selector"],
                        kd_loss=kw["kd"], lr=kw["lr"], batch_size=kw["bs"],
                        kd_weight=kw["kd_w"], mlm_weight=kw["mlm_w"], temperature=kw["temp"],
                        seed=0, mlflow=False, residue_weight=float(kw.get("res_w") or 1.0))
    stats = TeacherStats(TEACHERS, TEACHERS, [data.teach[t].shape[1] for t in TEACHERS],
                         [torch.tensor(data.teach[t].mean(0)) for t in TEACHERS],
                         [torch.tensor(data.teach[t].std(0)) for t in TEACHERS])
    res_t = kw.get("res_teachers", TEACHERS) if kw.get("res_w") else []
    rtab = {t: data.residues(t) for t in res_t}
    # Per-residue targets as mtdp.distill reads them: a column per teacher, standardised with
    # the pool's per-residue mean / std.
    stats.residues = {t: ResidueStats(residue_column(t), torch.from_numpy(v.mean(0)),
                                      torch.from_numpy(v.std(0))) for t, v in rtab.items()}
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in data.pool])])
    rows = {"id": data.pool_ids, "sequence": data.pool, **data.teach}
    for t, v in rtab.items():
        col = np.empty(len(data.pool), dtype=object)
        col[:] = [v[offsets[j]:offsets[j + 1]] for j in range(len(data.pool))]
        rows[residue_column(t)] = col
    return cfg, stats, rows


def run_entry(data: SweepData, entry: dict[str, Any], log=print) -> dict[str, Any]:
    """Distil one student with the entry's settings (see :data:`DEFAULTS`; ``res_w`` /
    ``res_teachers`` for per-residue distillation) and score it."""
    kw = {**DEFAULTS, **entry}
    label = kw.pop("label", str(entry))
    cfg, stats, rows = _setup(data, kw)
    bs, n = kw["bs"], len(data.pool)
    dist = new_distiller(cfg, stats, data.max_len, max(1, kw["epochs"] * (n // bs)))
    t0 = time.time()
    def progress(ep: int, m: dict[str, float]) -> None:
        log(f"  {label} epoch {ep} {time.time() - t0:.0f} s mlm {m['train/mlm']:.3f} "
            f"kd {m['train/kd']:.3f}")

    if kw["epochs"]:
        train_epochs(dist, rows, stats, epochs=kw["epochs"], batch_size=bs, on_epoch=progress)
    model = dist.student.eval()
    return {"label": label, **data.probe(embed_sequences(StudentEmbedder(model), data.evals)),
            "head_cosine": _head_cosine(model, data, stats)}


@torch.no_grad()
def _head_cosine(model, data: SweepData, stats: TeacherStats) -> dict[str, float]:
    """Mean cosine between each teacher head's output and the standardised teacher embedding
    of the held-out proteins."""
    tok, parts = ResidueTokenizer(), {t: [] for t in TEACHERS}
    for i in range(0, len(data.evals), 32):
        ids, att = tok.batch_encode(data.evals[i:i + 32])
        heads = model.teacher_logits(model(ids, att)["embedding"])
        for k, t in enumerate(TEACHERS):
            z = standardise(torch.tensor(data.teach_eval[t][i:i + 32]), stats.mean[k],
                            stats.std[k])
            parts[t].append(torch.nn.functional.cosine_similarity(heads[t], z, dim=-1))
    return {t: round(float(torch.cat(v).mean()), 3) for t, v in parts.items()}
