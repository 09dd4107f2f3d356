"""The sequence-homology baseline of ``--probe knn``: MMseqs2 best-hit transfer on the same
folds (what annotation by sequence similarity gives; CAFA's BLAST baseline, with MMseqs2).

One all-against-all ``mmseqs easy-search`` per task; for each fold a test protein takes the
labels of its best-scoring hit (bit score) among the training proteins — GO terms scored by
the hit's sequence identity, so Fmax can choose an identity threshold; a protein with no hit
on the training side gets no terms (a class: the training majority; a value: the training
mean). Needs the ``mmseqs`` binary (Debian/Ubuntu: ``apt install mmseqs2``; conda:
``mmseqs2``); without it the baseline is skipped with a message.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..clusters import install_hint, mmseqs_binary, mmseqs_run  # noqa: F401
from .metrics import compute_metrics
from .probes import _fold_terms

NAME = "mmseqs2-besthit"


def missing_message() -> str:
    return f"{NAME} baseline skipped: no `mmseqs` binary on PATH ({install_hint()})"


def all_hits(sequences: list[str], threads: int = 2, sensitivity: float = 7.5,
             binary: str | None = None) -> list[list[tuple[int, float]]]:
    """For each sequence: ``(other index, identity)`` of its MMseqs2 hits, best bit score
    first (itself excluded); E-value ≤ 10 as MMseqs2 reports them."""
    def args(tmp: Path) -> list[str]:
        fasta = str(tmp / "in.fasta")
        return ["easy-search", fasta, fasta, str(tmp / "hits.m8"), str(tmp / "work"),
                "--format-output", "query,target,fident,bits", "-s", str(sensitivity),
                "--max-seqs", "300", "--threads", str(threads), "-v", "1"]

    hits: list[list[tuple[int, float, float]]] = [[] for _ in sequences]
    with mmseqs_run(sequences, args, missing_message(), binary) as tmp, \
            open(tmp / "hits.m8") as fh:
        for line in fh:
            q, t, ident, bits = line.split("\t")
            if q != t:
                hits[int(q)].append((int(t), float(ident), float(bits)))
    return [[(t, ident) for t, ident, _ in sorted(h, key=lambda x: -x[2])] for h in hits]


def besthit_fold(hits: list[list[tuple[int, float]]], labels: np.ndarray, kind: str,
                 train_idx: np.ndarray, test_idx: np.ndarray, min_term_count: int
                 ) -> dict[str, Any]:
    """Metrics of best-hit transfer on one fold (the same names as the probes')."""
    train = np.zeros(len(labels), dtype=bool)
    train[train_idx] = True
    n_terms = None
    if kind == "multilabel":
        labels, n_terms = _fold_terms(labels, train_idx, min_term_count)
    best = [next(((t, i) for t, i in hits[q] if train[t]), None) for q in test_idx]
    if kind == "multilabel":
        out = np.zeros((len(test_idx), labels.shape[1]))
        for row, b in enumerate(best):
            if b is not None:
                out[row] = b[1] * labels[b[0]]
    elif kind in ("binary", "multiclass"):
        majority = np.bincount(labels[train_idx]).argmax()
        out = np.zeros((len(test_idx), int(labels.max()) + 1))
        out[np.arange(len(test_idx)), [labels[b[0]] if b else majority for b in best]] = 1.0
    else:
        mean = float(labels[train_idx].mean())
        out = np.array([labels[b[0]] if b else mean for b in best], dtype=np.float64)
    result = {f"test_{k}": v for k, v in compute_metrics(kind, labels[test_idx], out,
                                                         scores=True).items()}
    result.update(test_hit_rate=float(np.mean([b is not None for b in best])),
                  n_train=len(train_idx), n_test=len(test_idx))
    if n_terms is not None:
        result["n_terms"] = n_terms
    return result


def baseline_rows(tasks, folds: dict[str, list[np.ndarray]], cfg, log=print) -> list[dict]:
    """One trial-table row per (task, fold) of the best-hit baseline."""
    rows = []
    for t in tasks:
        t0 = time.perf_counter()
        hits = all_hits(t.sequences, threads=max(1, os.cpu_count() or 1))
        log(f"[benchmark] {NAME} × {t.name}: all-against-all search of {len(t)} proteins in "
            f"{time.perf_counter() - t0:.0f} s")
        for k, test in enumerate(folds[t.name]):
            train = np.setdiff1d(np.arange(len(t)), test)
            r = besthit_fold(hits, t.labels, t.kind, train, test, cfg.min_term_count)
            rows.append({"model": NAME, "task": t.name, "kind": t.kind, "fold": k,
                         "parameters": 0, "lr": np.nan, "hidden": np.nan,
                         "weight_decay": np.nan, "protocol": cfg.protocol, "trial_id": "",
                         **r})
    return rows
