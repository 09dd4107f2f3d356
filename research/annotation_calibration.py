#!/usr/bin/env python
"""What a distance means for `mtdp annotate`: nearest-neighbour annotation transfer across
homology folds, its precision by the distance to the neighbour, per model.

    python research/annotation_calibration.py                      # mtdp-unirep, UniRep-1900
    python research/annotation_calibration.py --models mtdp-unirep --metric euclidean

Each protein of a task (3,000, seeded; localization and GO-MF) is annotated from its nearest
protein in the *other* homology partitions (k = 1, as `mtdp annotate` does by default), so no
query has a close homologue on the reference side by construction. Per distance bin (quantiles
of the model's own distances) and cumulatively (every query with distance ≤ d: what
`--max-distance d` keeps): localization accuracy of the transferred class, GO precision and
recall of the transferred terms (propagated, as the task stores them). Embeddings come through
the evaluation cache (runs/embedding-store), so a rerun embeds nothing.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def nearest_across_folds(emb: np.ndarray, parts: np.ndarray, metric: str):
    """Index and distance of each protein's nearest protein in another partition."""
    from mtdp.search.transfer import knn

    idx = np.zeros(len(emb), dtype=np.int64)
    dist = np.zeros(len(emb))
    for p in np.unique(parts):
        q, r = np.flatnonzero(parts == p), np.flatnonzero(parts != p)
        i, d = knn(emb[r], emb[q], 1, metric)
        idx[q], dist[q] = r[i[:, 0]], d[:, 0]
    return idx, dist


def scores(task, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per query: ``correct`` (class tasks) or term ``precision`` and ``recall`` (GO)."""
    if task.kind == "multilabel":
        y = task.labels > 0.5
        hit = (y & y[idx]).sum(1)
        return {"precision": hit / np.maximum(y[idx].sum(1), 1),
                "recall": hit / np.maximum(y.sum(1), 1)}
    return {"accuracy": (task.labels == task.labels[idx]).astype(float)}


def table(name: str, dist: np.ndarray, per: dict[str, np.ndarray]) -> list[str]:
    """Rows of one model: per quantile bin, and cumulative up to that quantile's distance."""
    cuts = np.quantile(dist, QUANTILES)
    rows, lo = [], -np.inf
    for q, hi in zip(QUANTILES, cuts):
        band, upto = (dist > lo) & (dist <= hi), dist <= hi
        vals = " | ".join(f"{per[k][band].mean():.3f} / {per[k][upto].mean():.3f}" for k in per)
        rows.append(f"| {name} | ≤ {hi:.4g} (q{int(q * 100)}) | {band.sum()} | {vals} |")
        lo = hi
    return rows


def main(argv: list[str] | None = None) -> int:
    from mtdp.evaluate.cache import cached_embeddings
    from mtdp.evaluate.tasks import load_task
    from mtdp.models.registry import load_embedder

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mtdp-unirep,unirep1900")
    p.add_argument("--tasks", default="localization,go")
    p.add_argument("--proteins", type=int, default=3000)
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    p.add_argument("--cache", default=str(ROOT / "runs" / "embedding-store"))
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    print(f"`python research/annotation_calibration.py --models {args.models} --tasks "
          f"{args.tasks} --metric {args.metric}` · {commit} · {platform.node()}\n")
    for name in args.tasks.split(","):
        task = load_task(name, max_proteins=args.proteins)
        if task.partitions is None:
            raise SystemExit(f"{name}: no homology partitions")
        head = None
        for spec in args.models.split(","):
            emb = cached_embeddings(load_embedder(spec, device="cpu"), task, args.cache)[0]
            idx, dist = nearest_across_folds(emb, task.partitions, args.metric)
            per = scores(task, idx)
            if head is None:
                cols = " | ".join(f"{k} (bin / cumulative)" for k in per)
                print(f"**{name}** ({len(task)} proteins, {len(np.unique(task.partitions))} "
                      f"homology partitions, {args.metric} distance to the nearest protein "
                      f"of another partition)\n\n| model | distance | queries | {cols} |\n"
                      f"|---|---|---:|{'---:|' * len(per)}")
                head = True
            print("\n".join(table(spec, dist, per)))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
