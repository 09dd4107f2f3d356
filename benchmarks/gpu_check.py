"""Correctness of mtdp's GPU code paths (CUDA autocast, SDPA with T5's bias, fp16 teachers,
training) against float32 references; the checks live in :mod:`mtdp_bench.gpu_checks`.
CI has no GPU, so this is the check to run on one. Exits 1 if any check fails.

    python benchmarks/gpu_check.py                 # cuda
    python benchmarks/gpu_check.py --device cpu    # the same checks on CPU (plumbing only)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mtdp_bench.gpu_checks import run_checks
from mtdp.io import data_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fasta", type=Path,
                    default=data_dir() / "deeploc1" / "deeploc_test_set.fasta")
    ap.add_argument("--n", type=int, default=300, help="real proteins used")
    ap.add_argument("--steps", type=int, default=150, help="distillation steps")
    args = ap.parse_args()
    return run_checks(torch.device(args.device), args.fasta, args.n, args.steps)


if __name__ == "__main__":
    sys.exit(main())
