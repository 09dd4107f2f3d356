"""Numeric precision of model compute: ``fp32`` (exact, the accuracy reference) or ``bf16``
(bfloat16 matrix products under autocast). ``auto`` is bf16 where the hardware has bf16
matrix units — CUDA GPUs, and CPUs with AMX / AVX-512-BF16 (or Arm's BF16) — and fp32
elsewhere: on a CPU without them bf16 matmuls are emulated and far slower than fp32."""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16")
#: CPU feature flags (Linux ``/proc/cpuinfo``) of native bf16 matrix instructions.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True if this CPU has native bf16 matrix instructions (see :data:`BF16_CPU_FLAGS`)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return bool(BF16_CPU_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def resolve(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (``auto``, ``fp32``, ``bf16``) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``precision`` resolves to ``bf16``, else nothing."""
    kind = torch.device(device).type
    on = resolve(precision, device) == "bf16" and kind in ("cpu", "cuda")
    with torch.autocast(kind if kind in ("cpu", "cuda") else "cpu", dtype=torch.bfloat16,
                        enabled=on):
        yield
