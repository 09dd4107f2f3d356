"""bf16 on CPU, checked against fp32 (the accuracy reference): the rule that picks it, the
models' per-protein vectors (cosine >= 0.999 on real proteins, what lets bf16 and fp32 vectors
share a store) and the precision a caller gets from every entry point."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdp.embed import embed_sequences
from mtdp.models.registry import load_embedder
from mtdp.precision import cpu_has_bf16, resolve
from mtdp.sequences import read_fasta


@pytest.fixture(scope="module")
def proteins(real_fasta) -> list[str]:
    return [r.sequence[:120] for r in read_fasta(real_fasta)[:12]]


def test_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    assert resolve("auto", "cpu") == ("bf16" if cpu_has_bf16() else "fp32")
    import mtdp.precision as p

    monkeypatch.setattr(p, "cpu_has_bf16", lambda: True)
    assert p.resolve("auto", "cpu") == "bf16"
    monkeypatch.setattr(p, "cpu_has_bf16", lambda: False)
    assert p.resolve("auto", "cpu") == "fp32" and p.resolve("bf16", "cpu") == "bf16"


@pytest.mark.parametrize("spec", ["random-student:tiny", "mtdp-unirep", "tiny-random-esm2",
                                  "tiny-random-t5", "unirep64"])
def test_bf16_vectors_match_fp32(spec, proteins):
    fp32 = load_embedder(spec, device="cpu", precision="fp32")
    ref = embed_sequences(fp32, proteins)
    low = load_embedder(spec, device="cpu", precision="bf16")
    assert (fp32.precision, low.precision) == ("fp32", "bf16")
    got = embed_sequences(low, proteins)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, (spec, cos.min())
    assert not np.array_equal(got, ref)  # bf16 arithmetic really ran
