"""CAFA's naive GO baseline (term frequencies of the training folds) on the benchmark's folds:
the floor every model's GO Fmax should be read against (propagated terms such as 'binding'
make it high).

    python research/go_naive.py                  # homology and random splits, 10 folds
"""
from __future__ import annotations

import argparse

import numpy as np

from mtdp.evaluate.probes import naive_fmax
from mtdp.evaluate.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="go")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--min-term-count", type=int, default=50)
    ap.add_argument("--max-proteins", type=int, default=None)
    args = ap.parse_args()
    task = load_task(args.task, max_proteins=args.max_proteins, min_class_count=args.folds)
    for split in ("homology", "random"):
        f = naive_fmax(task, split, args.folds, min_term_count=args.min_term_count)
        print(f"{args.task} ({len(task)} proteins), {split} split: naive Fmax "
              f"{np.mean(f):.3f} ± {np.std(f):.3f} over {len(f)} folds")


if __name__ == "__main__":
    main()
