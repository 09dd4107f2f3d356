"""Does `mtdp predict fit` score like the benchmark? The same model's embeddings, the same
tasks and homology folds: `mtdp.predictor.fit_predictor` (folds given as its group column)
against the benchmark's MLP probe (`mtdp.evaluate.probes.train_probe`, tune/benchmark.py's
default) in one run; per task both means ± SE and their paired difference.

    python research/predictor_parity.py                      # shipped student, localization + GO
    python research/predictor_parity.py --model unirep1900 --tasks localization,membrane

GO: the labels hold the terms with >= 50 proteins in the subset, and both probes fit and score
all of them (the benchmark's per-fold choice of frequent terms, min_term_count, is set to 1
here: it would score fewer, easier terms than the predictor sees). Embeddings come from
the benchmark's store (runs/embedding-store), so nothing already embedded is embedded again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    from mtdp_studies.predictor_parity import parity

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mtdp-unirep")
    ap.add_argument("--tasks", default="localization,go")
    ap.add_argument("--proteins", type=int, default=3000)
    ap.add_argument("--store", default=str(ROOT / "runs" / "embedding-store"))
    args = ap.parse_args(argv)
    print(f"| task | metric | proteins | folds | `mtdp predict fit` | benchmark probe | "
          f"difference (paired) |\n|---|---|---:|---:|---:|---:|---:|")
    for name in args.tasks.split(","):
        r = parity(args.model, name.strip(), args.proteins, Path(args.store))
        p, b = np.array(r["predictor"]), np.array(r["benchmark"])
        se = lambda v: v.std(ddof=1) / np.sqrt(len(v))  # noqa: E731
        print(f"| {r['task']} | {r['metric']} | {r['proteins']} | {r['folds']} | "
              f"{p.mean():.3f} ± {se(p):.3f} | {b.mean():.3f} ± {se(b):.3f} | "
              f"{r['difference']:+.3f} ± {r['difference_se']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
