"""fp32 against bf16 on this machine's CPU, side by side in one run: the GEMM rates (the
machine's limits), then the student and UniRep embedding the same proteins in both, with the
vectors' cosine to fp32 (``benchmarks/throughput.py --precision-check``). Whether ``auto``
picks bf16 here is :func:`mtdp.precision.cpu_has_bf16`."""
from __future__ import annotations

import time

import numpy as np
import torch

from mtdp.embed import embed_sequences
from mtdp.precision import cpu_has_bf16
from .perf import fixed_set


def gemm_rate(n: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """GFLOP/s of an ``n × n`` matmul in ``dtype`` (at least one timed call)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0, k = time.perf_counter(), 0
    while k == 0 or time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n ** 3 * k / (time.perf_counter() - t0) / 1e9


def embed_pair(spec: str, seqs: list[str]) -> dict[str, float]:
    """One model in fp32 then bf16 on the same proteins: proteins/s each, min cosine."""
    from mtdp.models.registry import load_embedder

    out, ref = {}, None
    for prec in ("fp32", "bf16"):
        emb = load_embedder(spec, device="cpu", precision=prec)
        embed_sequences(emb, seqs[:1])  # warm-up
        t0 = time.perf_counter()
        x = embed_sequences(emb, seqs)
        out[f"{prec} proteins/s"] = len(seqs) / (time.perf_counter() - t0)
        ref = x if ref is None else ref
        if prec == "bf16":
            cos = (x * ref).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(ref, axis=1)
            out["min cosine to fp32"] = float(cos.min())
    out["bf16 / fp32"] = out["bf16 proteins/s"] / out["fp32 proteins/s"]
    return out


def run_precision_check(models: list[str], proteins: int, length: int) -> int:
    """Print the machine's GEMM rates in both precisions and each model side by side."""
    print(f"CPU bf16 matrix instructions (AMX / AVX-512-BF16): {cpu_has_bf16()}; "
          f"{torch.get_num_threads()} threads; `auto` picks "
          f"{'bf16' if cpu_has_bf16() else 'fp32'} here", flush=True)
    for n in (512, 1024, 2048):
        f, b = gemm_rate(n, torch.float32), gemm_rate(n, torch.bfloat16, 1.0)
        print(f"GEMM {n}²: fp32 {f:.0f} GFLOP/s, bf16 {b:.1f} GFLOP/s (bf16/fp32 {b / f:.2f})",
              flush=True)
    seqs = fixed_set(proteins, length, 0)
    for spec in models:
        r = embed_pair(spec, seqs)
        print(f"{spec}, {proteins} x {length} aa: " + ", ".join(
            f"{k} {v:.4g}" for k, v in r.items()), flush=True)
    return 0
