"""mtdp.models.kernels: the compiled attention kernel equals torch's ops, refuses bad input with a
clear error, and everything falls back to torch ops when it cannot be built."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtdp.models import kernels

ROOT = Path(__file__).resolve().parents[1]
HAVE_CXX = shutil.which(os.environ.get("CXX") or "g++") is not None
needs_kernel = pytest.mark.skipif(not (HAVE_CXX and sys.platform == "linux"),
                                  reason="kernels are built on Linux with a C++ compiler")


def _reference(q: torch.Tensor, k: torch.Tensor, vt: torch.Tensor, g: torch.Tensor,
               offset: int) -> torch.Tensor:
    """Plain torch: softmax(q kᵀ + B) v per head, B[i, j] = g[h, offset + i + j]; [n, H*dk]."""
    H, n, dk = q.shape
    idx = offset + torch.arange(n)[:, None] + torch.arange(n)[None, :]
    att = torch.softmax(q @ k.transpose(1, 2) + g[:, idx], dim=-1)  # [H, n, n]
    return (att @ vt.transpose(1, 2)).transpose(0, 1).reshape(n, H * dk)


@needs_kernel
@pytest.mark.parametrize("n,scale", [(1001, 8.0), (37, 1.0), (1, 1.0), (200, 1e3)])
def test_kernel_equals_torch_softmax(n: int, scale: float) -> None:
    op = kernels.attention_heads()
    assert op is not None, kernels.unavailable_reason()
    gen = torch.Generator().manual_seed(n)
    H, dk = 2, 16
    g = torch.randn(H, 2 * n + 10, generator=gen) * 3
    q = torch.randn(H, n, dk, generator=gen) * scale  # 1e3: exp overflows without the max
    k = torch.randn(H, n, dk, generator=gen)
    vt = torch.randn(H, dk, n, generator=gen)
    got = torch.empty(n, H * dk)
    op([q], [k], [vt], g, [4], [got])
    assert torch.isfinite(got).all()
    assert (got - _reference(q, k, vt, g, 4)).abs().max().item() < 1e-5
    # Each row's weights sum to one: attending over all-ones values gives ones.
    ones = torch.empty(n, H * dk)
    op([q], [k], [torch.ones(H, dk, n)], g, [4], [ones])
    assert torch.allclose(ones, torch.ones(n, H * dk), atol=1e-5)


@needs_kernel
def test_kernel_refuses_bad_input() -> None:
    op = kernels.attention_heads()
    assert op is not None, kernels.unavailable_reason()
    H, n, dk = 2, 8, 4
    q, k, vt = torch.zeros(H, n, dk), torch.zeros(H, n, dk), torch.zeros(H, dk, n)
    g = torch.randn(H, 20)
    with pytest.raises(RuntimeError, match="bias vector too short"):
        op([q], [k], [vt], g, [6], [torch.empty(n, H * dk)])
    with pytest.raises(RuntimeError, match="q, k and vt must be contiguous"):
        op([torch.zeros(H, n, 2 * dk)[:, :, ::2]], [k], [vt], g, [0], [torch.empty(n, H * dk)])
    with pytest.raises(RuntimeError, match="out must be a float32"):
        op([q], [k], [vt], g, [0], [torch.empty(n, H * dk - 1)])


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=300)


FALLBACK = """
import torch
from mtdp.models import kernels
from mtdp.models.student import StudentConfig, StudentModel
from mtdp.tokenizer import ResidueTokenizer
torch.manual_seed(0)
m = StudentModel(StudentConfig.preset("paper", num_layers=1)).eval()
ids, mask = ResidueTokenizer().batch_encode(["ACDEFGHIKLMNPQRSTVWY" * 12, "MKV" * 70])
with torch.inference_mode():
    fast = m.encode(ids, mask)
    m.fast_inference = False
    ref = m.encode(ids, mask)
print("op", kernels.attention_heads())
print("why", kernels.unavailable_reason())
print("diff", (fast - ref)[mask.bool()].abs().max().item())
"""


def test_no_compiler_falls_back_to_torch_ops(tmp_path: Path) -> None:
    res = _run(FALLBACK, CXX=str(tmp_path / "no-such-compiler"), MTDP_CACHE=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "op None" in res.stdout
    assert "no C++ compiler" in res.stdout
    assert float(res.stdout.split("diff ")[1]) < 1e-5
    assert "compiled CPU kernels unavailable" in res.stderr  # said once, as a warning


def test_failed_build_falls_back_and_disable_switch(tmp_path: Path) -> None:
    res = _run(FALLBACK, CXX="false", MTDP_CACHE=str(tmp_path))  # a "compiler" that fails
    assert res.returncode == 0, res.stderr
    assert "op None" in res.stdout and "false failed" in res.stdout
    assert float(res.stdout.split("diff ")[1]) < 1e-5
    assert not list(tmp_path.rglob("*.so"))  # no half-built library left behind
    res = _run(FALLBACK, MTDP_KERNELS="0")
    assert res.returncode == 0, res.stderr
    assert "op None" in res.stdout and "MTDP_KERNELS=0" in res.stdout


@pytest.mark.slow
@needs_kernel
def test_build_is_cached_and_reused(tmp_path: Path) -> None:
    code = "from mtdp.models import kernels; print(kernels.attention_heads() is not None)"
    first = _run("import logging; logging.basicConfig(level=logging.INFO)\n" + code,
                 MTDP_CACHE=str(tmp_path))
    assert first.stdout.strip() == "True", first.stderr
    assert "compiling CPU kernels" in first.stderr
    libs = list(tmp_path.rglob("*.so"))
    assert len(libs) == 1
    again = _run("import logging; logging.basicConfig(level=logging.INFO)\n" + code,
                 MTDP_CACHE=str(tmp_path))
    assert again.stdout.strip() == "True" and "compiling" not in again.stderr
    libs[0].write_bytes(b"not a shared library")  # e.g. a cache copied from another system
    third = _run(code, MTDP_CACHE=str(tmp_path))
    assert third.stdout.strip() == "True", third.stderr
    assert "rebuilding" in third.stderr


@needs_kernel
def test_attention_heads_equal_torch_ops_on_unequal_lengths() -> None:
    from mtdp.models.fast_t5 import _heads

    op = kernels.attention_heads()
    assert op is not None, kernels.unavailable_reason()
    gen = torch.Generator().manual_seed(3)
    H, dk, c = 4, 16, 400
    g = torch.randn(H, 2 * c + 1, generator=gen)
    lengths = [300, 7, 161, 1]  # more (sequence, head) tasks than threads, unequal costs
    q = [torch.randn(H, n, dk, generator=gen) for n in lengths]
    k = [torch.randn(H, n, dk, generator=gen) for n in lengths]
    vt = [torch.randn(H, dk, n, generator=gen) for n in lengths]
    offsets = [c - (n - 1) for n in lengths]
    got = [torch.full((n, H * dk), float("nan")) for n in lengths]
    op(q, k, vt, g, offsets, got)
    for i, n in enumerate(lengths):
        ref = torch.empty(n, H, dk)
        _heads(q[i], k[i], vt[i], g, offsets[i], ref)
        assert (got[i] - ref.view(n, H * dk)).abs().max().item() < 1e-5
    with pytest.raises(RuntimeError, match="bias vector too short"):
        op(q[:1], k[:1], vt[:1], g[:, :100].contiguous(), offsets[:1], got[:1])
    with pytest.raises(RuntimeError, match="one entry per sequence"):
        op(q, k, vt, g, offsets[:2], got)
