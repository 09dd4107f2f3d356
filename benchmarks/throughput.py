"""Per-protein embedding throughput: the student vs teacher-sized models, side by side
(the experiment lives in :mod:`mtdp_bench.throughput`).

Same process, same input, same batching code for the paper student (fused and stock) and
random-weight models with ESM-2 650M's and the ProtT5-XL encoder's architectures (timing does
not depend on weight values). Inputs: a fixed-length set (``--fixed-len`` residues) and real
proteins with their real length distribution (DeepLoc 1.0 test set from the data folder). It
also measures the machine's GEMM rate and reports each model's achieved GFLOP/s as a
fraction of it. CPU: fp32. CUDA: bf16 student, fp16 teachers.

    python benchmarks/throughput.py                       # default run, ~5 min on 2 cores
    python benchmarks/throughput.py --models student student-stock --student-fixed 32
    python benchmarks/throughput.py --device cuda --student-fixed 10000 --models student
    python benchmarks/throughput.py --paper-set           # the paper's efficiency figure
    python benchmarks/throughput.py --precision-check --student-fixed 8 --fixed-len 256
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mtdp_bench.throughput import MODELS, ThroughputConfig, run_throughput  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: physical cores available)")
    ap.add_argument("--fixed-len", type=int, default=1000, help="residues per fixed-length protein")
    ap.add_argument("--student-fixed", type=int, default=8, help="fixed-length proteins, student")
    ap.add_argument("--teacher-fixed", type=int, default=4, help="fixed-length proteins, teachers")
    ap.add_argument("--student-real", type=int, default=64, help="real proteins, student")
    ap.add_argument("--teacher-real", type=int, default=2,
                    help="real proteins, teachers (0: skip); the student also runs these")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per student run")
    ap.add_argument("--teacher-repeats", type=int, default=1, help="timed repeats per teacher run")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help="token budget per batch (default: mtdp.embed's for the device)")
    ap.add_argument("--fasta", type=Path, default=None,
                    help="real proteins (default DATA_DIR/deeploc1/deeploc_test_set.fasta)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paper-set", action="store_true",
                    help="the paper's efficiency comparison instead: student, released-MTDP "
                         "form, ESM-2 8M..650M, ProtBert-BFD, ProtT5-XL on 1,000-aa proteins; "
                         "writes benchmarks/results/efficiency.md/.png")
    ap.add_argument("--precision-check", nargs="*", metavar="MODEL", default=None,
                    help="fp32 against bf16 on this CPU instead: GEMM rates, then each MODEL "
                         "spec (default: mtdp-unirep unirep64 tiny-random-esm2) on "
                         "--student-fixed proteins of --fixed-len residues, with the cosine")
    ap.add_argument("--paper-proteins", type=int, default=2,
                    help="--paper-set: proteins timed per teacher (students: 8x)")
    args = ap.parse_args(argv)
    if args.paper_set:
        from mtdp_bench.paper_set import PaperSetConfig, run_paper_set

        if args.paper_proteins < 1:
            ap.error("--paper-proteins must be at least 1")
        run_paper_set(PaperSetConfig(proteins=args.paper_proteins,
                                     student_proteins=8 * args.paper_proteins,
                                     device=args.device, batch_tokens=args.batch_tokens))
        return 0
    if args.precision_check is not None:
        from mtdp_bench.precision_perf import run_precision_check

        return run_precision_check(args.precision_check or ["mtdp-unirep", "unirep64",
                                                            "tiny-random-esm2"],
                                   args.student_fixed, args.fixed_len)
    args = {k: v for k, v in vars(args).items()
            if k not in ("paper_set", "paper_proteins", "precision_check")}
    return run_throughput(ThroughputConfig(**args))


if __name__ == "__main__":
    sys.exit(main())
