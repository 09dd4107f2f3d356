"""Optional compiled CPU kernel for the student's fused inference path.

``csrc/attention.cpp`` holds ``torch.ops.mtdp.t5_attention_heads``: all heads of all sequences
of one layer, one head per thread of torch's pool (single-threaded oneDNN GEMMs), with T5's
position bias and the softmax fused into two passes over each head's scores where torch needs
three plus a separate add; one call from Python instead of ~30 per sequence (-15 % attention
time on 8 × 1,000 aa, -45 % for the bias + softmax step).

It is compiled on first use with the system C++ compiler (``$CXX``, else ``g++``) against the
installed torch's headers — a few seconds, once — and cached under
``$MTDP_CACHE/kernels`` (default ``~/.cache/mtdp/kernels``), keyed by the source, the torch
version and the CPU, so every process on a node (Ray workers included) reuses one build.
Everything works without it: with no compiler, another platform, a failed build, or
``MTDP_KERNELS=0``, :func:`attention_heads` returns None (the reason is logged once) and
the caller uses plain torch ops, with the same results to float32 rounding.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform as _platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import torch

from ..io import atomic_path, cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "attention.cpp"
_LOCK = threading.Lock()
_STATE: dict[str, object] = {"done": False, "ok": False, "why": None}


def cache_dir() -> Path:
    """Where built kernels live: ``$MTDP_CACHE/kernels`` or ``~/.cache/mtdp/kernels``."""
    return cache_root() / "kernels"


def _cpu_id() -> str:
    """The CPU's model name and feature flags: a library built with ``-march=native`` must
    only be reused where the same instructions exist (a shared cache on mixed nodes, or VMs
    of one CPU model with AVX-512 masked off)."""
    found = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "flags") and key not in found:
                found[key] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return " | ".join(found.values()) or _platform.processor() or "unknown"


def _build_flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    lib = Path(torch.__file__).parent / "lib"
    cap = torch.backends.cpu.get_cpu_capability()  # what torch's own kernels dispatch to
    flags = ["-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-march=native",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"]
    if cap in ("AVX512", "AVX2"):
        flags += [f"-DCPU_CAPABILITY_{cap}", f"-DCPU_CAPABILITY={cap}"]
    flags += [f"-I{p}" for p in include_paths()]
    flags += [f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]
    return flags


def _library_path(compiler: str, flags: list[str]) -> Path:
    key = hashlib.sha256("\n".join(
        [SOURCE.read_text(), torch.__version__, compiler, " ".join(flags), _cpu_id()]
    ).encode()).hexdigest()[:16]
    return cache_dir() / key / "mtdp_kernels.so"


def _build(compiler: str, flags: list[str], target: Path) -> None:
    # Build to a temporary name and rename: processes building at once never load a
    # half-written library, and the last rename wins with an identical file.
    with atomic_path(target, suffix=".so") as tmp:
        res = subprocess.run([compiler, str(SOURCE), "-o", str(tmp), *flags],
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{compiler} failed ({res.returncode}): "
                               f"{res.stderr.strip()[-2000:]}")


def check_trusted(library: Path) -> None:
    """Refuse to load ``library`` unless it and every folder from the cache root down to it
    belong to this user and nobody else can write them: a library loaded into the process runs
    with its rights, so a shared or planted cache must never be trusted.

    Raises:
        PermissionError: naming the file or folder and what is wrong with it.
    """
    root = cache_dir().resolve()
    me = os.getuid()
    path = library.resolve()
    chain = [path] + [p for p in path.parents if p == root or root in p.parents]
    for p in chain:
        st = p.stat()
        if st.st_uid != me:
            raise PermissionError(f"{p} belongs to uid {st.st_uid}, not to this user ({me}); "
                                  "refusing to load kernels from it (set MTDP_CACHE to a "
                                  "folder of your own)")
        if st.st_mode & 0o022:
            raise PermissionError(f"{p} is writable by others (mode {st.st_mode & 0o777:o}); "
                                  "refusing to load kernels from it (chmod go-w, or set "
                                  "MTDP_CACHE to a folder of your own)")


class _Disabled(RuntimeError):
    pass


def _load() -> None:
    if os.environ.get("MTDP_KERNELS", "1").lower() in ("0", "false", "no", "off"):
        raise _Disabled("disabled by MTDP_KERNELS=0")
    if sys.platform != "linux" or _platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(f"built and tested on Linux x86-64 only, not {sys.platform} "
                           f"{_platform.machine()}")
    if not hasattr(torch.ops.mtdp, "t5_attention_heads"):  # not loaded in this process yet
        compiler = os.environ.get("CXX") or "g++"
        if shutil.which(compiler) is None:
            raise RuntimeError(f"no C++ compiler ({compiler!r} not found; set CXX)")
        flags = _build_flags()
        target = _library_path(compiler, flags)
        if not target.is_file():
            log.info("mtdp: compiling CPU kernels into %s", target)
            _build(compiler, flags, target)
        check_trusted(target)
        try:
            torch.ops.load_library(str(target))
        except OSError as e:  # a cached build that no longer loads: rebuild it once
            log.warning("mtdp: cached kernels %s do not load (%s); rebuilding", target, e)
            _build(compiler, flags, target)
            torch.ops.load_library(str(target))


def _ensure() -> bool:
    """Build (once per node) and load (once per process) the kernel; False if unavailable."""
    if not _STATE["done"]:
        with _LOCK:
            if not _STATE["done"]:
                try:
                    _load()
                    _STATE["ok"] = True
                except Exception as e:  # any failure: callers fall back to torch ops
                    _STATE["why"] = f"{type(e).__name__}: {e}"
                    disabled = isinstance(e, _Disabled)
                    (log.info if disabled else log.warning)(
                        "mtdp: compiled CPU kernels unavailable, using torch ops (%s)",
                        _STATE["why"])
                _STATE["done"] = True
    return bool(_STATE["ok"])


def attention_heads() -> Callable | None:
    """``torch.ops.mtdp.t5_attention_heads(q, k, vt, bias, offset, out)``, or None when the
    kernels are unavailable (why: :func:`unavailable_reason`).

    For each sequence ``s`` and head ``h``: ``out[s][:, h*dk:(h+1)*dk] = softmax(q[s][h]
    k[s][h]ᵀ + B) vt[s][h]ᵀ`` with ``B[i, j] = bias[h, offset[s] + i + j]`` (``q``, ``k``
    [H, n, dk], ``vt`` [H, dk, n], float32, contiguous; ``out[s]`` [n, H*dk]). Heads run one
    per thread of torch's pool, each with single-threaded oneDNN GEMMs and the bias + softmax
    fused into two passes.
    """
    return torch.ops.mtdp.t5_attention_heads if _ensure() else None


def unavailable_reason() -> str | None:
    """Why the kernels are unavailable (None if they loaded or were not tried yet)."""
    return _STATE["why"]  # type: ignore[return-value]
