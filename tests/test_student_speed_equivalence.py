"""The student's fused inference path (mtdp.models.fast_t5.FastT5Encoder) computes exactly what the
stock transformers T5EncoderModel computes, on padded batches, for every attention path."""
from __future__ import annotations

import copy
import os
import pickle
import shutil

import pytest
import torch

from mtdp.models import kernels
from mtdp.models.fast_t5 import FastT5Encoder
from mtdp.models.student import StudentConfig, StudentModel
from mtdp.tokenizer import ResidueTokenizer

TOL = 1e-5


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    seqs = ["".join(aa[i] for i in torch.randint(0, 20, (n,), generator=g).tolist())
            for n in lengths]
    return ResidueTokenizer().batch_encode(seqs)


def _stock(model: StudentModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The transformers module itself, eager attention: the reference implementation.
    model.encoder.config._attn_implementation = "eager"
    try:
        return model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        model.encoder.config._attn_implementation = "sdpa"


def _model(preset: str, seed: int = 0, **overrides) -> StudentModel:
    torch.manual_seed(seed)
    m = StudentModel(StudentConfig.preset(preset, **overrides)).eval()
    # Non-trivial position-bias table and norm scales (random init leaves norms at 1).
    with torch.no_grad():
        for p in m.encoder.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
        bias = m.encoder.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
        bias.weight.normal_(0, 1.0)
    return m


@pytest.mark.parametrize("attention", ["loop", "sdpa", "mixed"])
@pytest.mark.parametrize("onednn,kernel", [(True, True), (True, False), (False, False)])
def test_fast_equals_stock_with_padding(attention: str, onednn: bool, kernel: bool) -> None:
    # Paper architecture (8 heads × 64, 32 buckets, max distance 128); lengths past 128 so the
    # long-distance buckets are exercised, with padding in the batch.
    model = _model("paper", num_layers=2)
    ids, mask = _batch([260, 131, 7, 200])
    assert (mask == 0).any()
    fast = FastT5Encoder(model.encoder)
    fast.use_onednn = onednn and fast.use_onednn
    fast.use_kernels = kernel  # the compiled bias + softmax kernel, or torch's ops
    if kernel and shutil.which(os.environ.get("CXX") or "g++"):
        assert kernels.attention_heads() is not None, kernels.unavailable_reason()
    # mixed: 131 and 7 take the batched SDPA kernel, 260 and 200 the per-head loop.
    fast.loop_attention_min_len = {"loop": 0, "sdpa": 1 << 62, "mixed": 150}[attention]
    with torch.inference_mode():
        ref = _stock(model, ids, mask)
        out = fast(ids, mask)
    assert out.shape == ref.shape
    real = mask.bool()
    assert (out - ref)[real].abs().max().item() < TOL
    if fast.use_onednn:
        # The packed CPU path does no work for padding: those positions are zeros.
        assert out[~real].abs().max().item() == 0
    else:
        # The padded path computes padding positions too, exactly like the stock module.
        assert (out - ref).abs().max().item() < TOL


def test_left_padding_falls_back_to_the_padded_path() -> None:
    model = _model("tiny")
    ids, mask = _batch([30, 12], seed=4)
    ids, mask = ids.flip(1).contiguous(), mask.flip(1).contiguous()  # pads first
    with torch.inference_mode():
        ref = _stock(model, ids, mask)
        out = FastT5Encoder(model.encoder)(ids, mask)
    assert (out - ref).abs().max().item() < TOL


def test_encode_and_embed_tokens_use_fast_path_and_match() -> None:
    model = _model("tiny")
    ids, mask = _batch([40, 300, 1, 170], seed=1)
    with torch.inference_mode():
        model.fast_inference = False
        ref_h = model.encode(ids, mask)
        ref_e, ref_r = model.embed_tokens(ids, mask, per_residue=True)
        model.fast_inference = True
        h = model.encode(ids, mask)
        e, r = model.embed_tokens(ids, mask, per_residue=True)
    assert model._fast is not None, "inference did not take the fused path"
    real = mask.bool()
    assert (h - ref_h)[real].abs().max().item() < TOL
    assert (e - ref_e).abs().max().item() < TOL
    assert (r - ref_r)[real].abs().max().item() < TOL


def test_training_and_grad_use_stock_module() -> None:
    model = _model("tiny")
    ids, mask = _batch([30, 12])
    model.train()
    out = model(ids, mask)
    assert out["hidden"].requires_grad
    out["embedding"].sum().backward()
    q = model.encoder.encoder.block[0].layer[0].SelfAttention.q.weight
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert model._fast is None  # never built while training


def test_cache_follows_weight_updates() -> None:
    model = _model("tiny")
    ids, mask = _batch([50, 20], seed=2)
    with torch.inference_mode():
        before = model.encode(ids, mask)
    # An optimiser step changes parameters in place: the fused weights must not go stale.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(ids, mask)["embedding"].pow(2).sum().backward()
    opt.step()
    model.eval()
    with torch.inference_mode():
        after = model.encode(ids, mask)
        ref = _stock(model, ids, mask)
    real = mask.bool()
    assert (after - before)[real].abs().max().item() > 1e-3
    assert (after - ref)[real].abs().max().item() < TOL
    # load_state_dict copies in place too.
    other = _model("tiny", seed=5)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        diff = model.encode(ids, mask) - _stock(other, ids, mask)
        assert diff[real].abs().max().item() < TOL


def test_longer_than_cached_bias_and_copies() -> None:
    model = _model("tiny")
    fast = FastT5Encoder(model.encoder)
    fast.max_cached_bias_len = 64  # force the uncached giant-protein branch
    ids, mask = _batch([90, 10], seed=3)
    real = mask.bool()
    with torch.inference_mode():
        ref = _stock(model, ids, mask)
        assert (fast(ids, mask) - ref)[real].abs().max().item() < TOL
        model.encode(ids, mask)  # builds the cache
        clone = copy.deepcopy(model)
        restored = pickle.loads(pickle.dumps(model))
        assert (clone.encode(ids, mask) - ref)[real].abs().max().item() < TOL
        assert (restored.encode(ids, mask) - ref)[real].abs().max().item() < TOL


def test_bad_attention_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTDP_ATTENTION", "flash")
    with pytest.raises(ValueError, match="MTDP_ATTENTION"):
        FastT5Encoder(_model("tiny").encoder)


def test_bias_vector_grows_past_its_first_size() -> None:
    # The per-head bias vector starts at ±1,023 positions; a longer protein must regrow it
    # (and shorter ones after it must still slice it correctly).
    model = _model("tiny")
    fast = FastT5Encoder(model.encoder)
    with torch.inference_mode():
        for lengths in ([300, 200], [1100, 170], [260]):
            ids, mask = _batch(lengths, seed=len(lengths))
            real = mask.bool()
            ref = _stock(model, ids, mask)
            assert (fast(ids, mask) - ref)[real].abs().max().item() < TOL
    assert fast._bias_vec.shape[1] >= 2 * 1101 - 1
