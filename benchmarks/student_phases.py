"""Where the fused student's CPU time goes: q/k/v projections, attention, and the output
projection + feed-forward, each against the time it would take at this machine's GEMM rate.

Wraps the fused path's two per-layer stages (``FastT5Encoder._qkv_reversed`` and the compiled
``mtdp.t5_attention_heads`` call, or the torch-op fallback ``mtdp.models.fast_t5._heads``) with
timers; the rest of each forward is the output projection, the feed-forward and the norms.

    python benchmarks/student_phases.py                   # 8 x 1,000 aa, fp32, all cores
    MTDP_KERNELS=0 python benchmarks/student_phases.py    # the torch-op attention instead
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from mtdp_bench.perf import gemm_rates
from mtdp.models import fast_t5 as S
from mtdp.models import kernels
from mtdp.models.student import StudentConfig, StudentModel
from mtdp.tokenizer import ResidueTokenizer

AA = "ACDEFGHIKLMNPQRSTVWY"


def gemm_rate() -> float:
    """This machine's fp32 GEMM rate in GFLOP/s, as ``throughput.py`` measures it (2048²; the
    fastest of torch's BLAS and oneDNN with plain or pre-packed weights)."""
    return max(gemm_rates(torch.device("cpu")).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proteins", type=int, default=8)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = StudentModel(StudentConfig.preset("paper")).eval()
    cfg = model.config
    seqs = ["".join(random.Random(i).choices(AA, k=args.length)) for i in range(args.proteins)]
    ids, mask = ResidueTokenizer().batch_encode(seqs)
    fast = S.FastT5Encoder(model.encoder)
    rate_start = gemm_rate()
    spent = {"q/k/v projections": 0.0, "attention": 0.0}

    def timed(fn, key):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    S.FastT5Encoder._qkv_reversed = timed(S.FastT5Encoder._qkv_reversed, "q/k/v projections")
    S._heads = timed(S._heads, "attention")
    op = kernels.attention_heads()
    if op is not None:
        wrapped = timed(op, "attention")
        kernels.attention_heads = lambda: wrapped
    with torch.inference_mode():
        fast(ids, mask)  # warm-up (builds packed weights and the bias vector)
        for k in spent:
            spent[k] = 0.0
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fast(ids, mask)
        total = (time.perf_counter() - t0) / args.repeats
    # Best of start and end: on a shared machine a momentary slowdown must not lower the bar.
    rate = max(rate_start, gemm_rate()) * 1e9
    # Equal lengths, so no padding: every position of ids is a real token.
    T, n, L, d = ids.shape[0] * ids.shape[1], ids.shape[1], cfg.num_layers, cfg.d_model
    hd = cfg.num_heads * cfg.d_kv
    ideal = {"q/k/v projections": L * T * 2 * d * 3 * hd / rate,
             "attention": L * ids.shape[0] * cfg.num_heads * 4 * n * n * cfg.d_kv / rate,
             "output + feed-forward + norms": L * T * 2 * (hd * d + 2 * d * cfg.d_ff) / rate}
    per = {k: v / args.repeats for k, v in spent.items()}
    per["output + feed-forward + norms"] = total - sum(per.values())
    compiled = "yes" if op is not None else f"no ({kernels.unavailable_reason()})"
    print(f"{args.proteins} x {args.length} aa, {torch.get_num_threads()} threads, compiled "
          f"kernel: {compiled}, GEMM rate {rate / 1e9:.0f} GFLOP/s (2048², fastest BLAS, best of start and end)")
    print(f"{'stage':<32} {'s/forward':>10} {'at GEMM rate':>13} {'efficiency':>11}")
    for k, v in per.items():
        print(f"{k:<32} {v:>10.3f} {ideal[k]:>13.3f} {100 * ideal[k] / v:>10.0f}%")
    print(f"{'whole forward':<32} {total:>10.3f} {sum(ideal.values()):>13.3f} "
          f"{100 * sum(ideal.values()) / total:>10.0f}%")


if __name__ == "__main__":
    main()
