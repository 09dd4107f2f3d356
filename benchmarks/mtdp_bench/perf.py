"""Measuring speed and memory honestly on a shared machine: the machine's GEMM rate (the
reference every model's efficiency is a fraction of), FLOPs counted from each architecture,
peak memory (CUDA allocator or the kernel's RSS high-water mark) and timed runs of the
embedding engine. Used by ``benchmarks/*.py`` scripts; timings never live in unit tests."""
from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtdp.embed import embed_sequences
from mtdp.models.base import Embedder
from mtdp.models.student import StudentEmbedder
from mtdp.models.teachers import ESM2Teacher, T5Teacher
from mtdp.sequences import prepare, read_fasta
from .memory import reset_rss_peak, rss_bytes, rss_peak_bytes

AA = "ACDEFGHIKLMNPQRSTVWY"


def t5_flops(cfg, n: int) -> float:
    """FLOPs of a T5 encoder over one sequence of ``n`` tokens (attention included)."""
    inner = cfg.num_heads * cfg.d_kv
    ff_in = 2 if cfg.is_gated_act else 1
    per_token = 2 * (3 * cfg.d_model * inner + inner * cfg.d_model
                     + (ff_in + 1) * cfg.d_model * cfg.d_ff)
    attention = 2 * 2 * n * n * inner  # q kᵀ and p v
    return cfg.num_layers * (n * per_token + attention)


def protein_flops(embedder: Embedder, length: int) -> float:
    """Matmul FLOPs to embed one protein of ``length`` residues with ``embedder``."""
    if isinstance(embedder, StudentEmbedder):
        m = embedder.model
        # + </s>; the reference pooling pads every protein to max_len + 1 tokens.
        n = m.config.max_len + 1 if m.config.pooling == "reference" else length + 1
        return t5_flops(m.encoder.config, n) + 2 * m.config.d_model * m.config.embed_dim
    if isinstance(embedder, T5Teacher):
        return t5_flops(embedder.model.config, length + 1)
    if isinstance(embedder, ESM2Teacher):
        m = embedder.model
        n = length + 2  # <cls> ... <eos>
        layer = m.layers[0]
        d, ff = m.embed_dim, layer.fc1.out_features
        per_token = 2 * (4 * d * d + 2 * d * ff)
        attention = 2 * 2 * n * n * d
        # fair-esm always runs its LM head (dense d×d + vocabulary projection).
        head = 2 * n * (d * d + d * m.alphabet_size)
        return m.num_layers * (n * per_token + attention) + head
    if type(embedder).__name__ == "BertTeacher":
        c = embedder.model.config
        n = length + 2  # [CLS] ... [SEP]
        per_token = 2 * (4 * c.hidden_size ** 2 + 2 * c.hidden_size * c.intermediate_size)
        return c.num_hidden_layers * (n * per_token + 4 * n * n * c.hidden_size)
    raise TypeError(f"no FLOP model for {type(embedder).__name__}")


def physical_cores() -> int:
    """Physical cores (hyper-threads share one core's FPUs, so they do not help GEMMs)."""
    try:
        pairs, phys, core = set(), None, None
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    pairs.add((phys, core))
                    core = None
        if core is not None:
            pairs.add((phys, core))
        n = len(pairs)
    except OSError:
        n = 0
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n or avail or 1, avail or 1))


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak; on CPU the kernel's RSS
    high-water mark (reset on entry), or where that cannot be reset, RSS sampled every 5 ms
    by a thread (which costs the timed run a little: it wakes and takes the GIL)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0
        self._stop = threading.Event()
        self._hwm = False

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self.peak = rss_bytes()
            self._hwm = reset_rss_peak()
            if not self._hwm:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._hwm:
            self.peak = max(self.peak, rss_peak_bytes())
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_size(device: torch.device) -> int:
    """Square GEMM size for the machine's rate: 2048 on CPU, 8192 on a GPU (fills it)."""
    return 8192 if device.type == "cuda" else 2048


def gemm_rates(device: torch.device, n: int | None = None, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of an n×n×n matmul: fp32 through torch's default BLAS and (CPU) oneDNN; on
    CUDA fp32 (TF32 off) and bf16."""
    n = n or gemm_size(device)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    fns = {"torch.matmul": lambda: a @ b}
    if device.type == "cuda":
        # TF32 off: an honest fp32 reference (bf16 peak is reported separately).
        torch.backends.cuda.matmul.allow_tf32 = False
        ab, bb = a.bfloat16(), b.bfloat16()
        fns["bf16 matmul"] = lambda: ab @ bb
    elif torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        bt = b.t().contiguous()
        fns["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
        try:  # weights pre-packed into oneDNN's layout, as the student's GEMMs use them
            bp = torch.ops.mkldnn._reorder_linear_weight(bt)
            fns["oneDNN packed"] = lambda: torch.ops.mkldnn._linear_pointwise(
                a, bp, None, "none", [], "")
        except (AttributeError, RuntimeError):
            pass
    out = {}
    for name, fn in fns.items():
        fn()
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = 2 * n ** 3 / statistics.median(times) / 1e9
    return out


def fixed_set(n: int, length: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(AA, k=length)) for _ in range(n)]


def real_sets(path: Path, n_large: int, n_small: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Random real proteins (prepared: cleaned, truncated to 1,000): a large sample and the
    first ``n_small`` of it (the teachers' sample, so ratios compare identical input)."""
    records = read_fasta(path)
    rng = random.Random(seed)
    rng.shuffle(records)
    seqs = [prepare(r.sequence, seq_id=r.id, source=str(path)) for r in records]
    if len(seqs) < max(n_large, n_small):
        raise ValueError(f"{path} has {len(seqs)} proteins; asked for {max(n_large, n_small)}")
    return seqs[:max(n_large, n_small)], seqs[:n_small]


@dataclass
class Row:
    model: str
    input: str
    proteins: int
    residues: int
    flops: float
    times: list[float] = field(default_factory=list)
    peak: int = 0
    #: Largest rise over the pre-run memory (activations, temporaries) of any repeat.
    extra: int = 0

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def proteins_per_s(self) -> float:
        return self.proteins / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.residues / self.seconds

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9


def time_embed(embedder: Embedder, name: str, label: str, seqs: list[str], repeats: int,
               batch_tokens: int | None, rows: dict, warmup: bool = False) -> Row:
    """Time ``embed_sequences`` (repeats accumulate into one row; the median is reported).

    ``warmup``: one untimed pass over the same input first, so the timed ones measure the
    steady state of embedding a large file (allocator and caches warm again after another
    model ran), not the first batch after a switch."""
    key = (name, label)
    row = rows.get(key)
    if row is None:
        row = rows[key] = Row(name, label, len(seqs), sum(map(len, seqs)),
                              sum(protein_flops(embedder, len(s)) for s in seqs))
    dev = embedder.device
    if warmup:
        embed_sequences(embedder, seqs, batch_tokens=batch_tokens)
        sync(dev)
    for _ in range(repeats):
        gc.collect()
        base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else rss_bytes()
        with PeakMemory(dev) as pm:
            t0 = time.perf_counter()
            embed_sequences(embedder, seqs, batch_tokens=batch_tokens)
            sync(dev)
            row.times.append(time.perf_counter() - t0)
        row.peak = max(row.peak, pm.peak)
        row.extra = max(row.extra, pm.peak - base)
        # Progress on stderr, so a long run shows where it is (the table comes at the end).
        print(f"  .. {name:<22} {label:<25} {row.times[-1]:8.3f} s", file=sys.stderr,
              flush=True)
    return row
