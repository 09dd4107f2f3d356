"""Fused inference path of the student's T5 encoder (CPU: oneDNN + packed tokens; CUDA: SDPA).

:class:`FastT5Encoder` recomputes a ReLU ``T5EncoderModel`` forward on that module's own
parameters, arranged for speed; :meth:`mtdp.models.student.StudentModel.encode` uses it in
inference. Equal to the stock module within float32 rounding (tests/test_student_speed_equivalence.py).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels

def _onednn_linear_available() -> bool:
    """True when this torch build has oneDNN's fused linear (``mkldnn::_linear_pointwise``)."""
    try:
        return torch.backends.mkldnn.is_available() and \
            hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


class FastT5Encoder:
    """Inference-only re-implementation of a ReLU ``T5EncoderModel`` forward on its parameters.

    Same mathematics as ``transformers`` (pre-RMSNorm blocks, relative position bias from layer
    0 shared by every layer, no 1/sqrt(d) scaling, padded keys excluded), arranged for speed:

    * q, k and v are one GEMM (weights concatenated), and each RMSNorm's scale is folded into
      the weights of the GEMM that follows it;
    * the position bias (+ padding mask) is built once per forward, not once per layer, from
      a cached table grown to the longest length seen, and is never padded when the batch
      has no padding;
    * on CPU the GEMMs run through oneDNN (``mkldnn::_linear_pointwise``) on weights packed
      once into oneDNN's layout, with the ReLU and the residual additions fused as post-ops:
      oneDNN uses AVX-512 where MKL, torch's default fp32 GEMM, may not (AMD CPUs);
    * on CPU the batch is *packed*: only real tokens enter the GEMMs (no padding work), each
      sequence attends over exactly its own length, and padding positions of the output are
      zeros (the stock module returns values there that nothing uses);
    * on CPU long sequences run attention head by head (no ``[B, H, L, L]`` tensor exists),
      with keys in reverse order so that each head's bias is a sliding window over one short
      vector rather than an ``[L, L]`` table (see :meth:`_qkv_reversed`); all heads of a layer
      are one call to a compiled kernel (:mod:`mtdp.models.kernels`: one head per thread, bias +
      softmax fused) where it could be built, torch ops head after head otherwise;
    * the output projection and feed-forward run in row chunks, updating the hidden state in
      place, so the ``d_ff``-wide intermediate stays in cache and no layer allocates
      batch-sized tensors;
    * elsewhere (CUDA, bf16 autocast, or a left-padded mask) it uses ``F.linear`` and
      ``F.scaled_dot_product_attention`` on the padded batch with the bias as the mask.

    All arithmetic stays float32 on CPU; at every real position results equal the stock module
    within float32 rounding (~1e-6). Derived tensors are cached and rebuilt whenever a
    parameter changes (tracked by tensor version counters and storage), so they never go stale
    after training or ``.to(device)``.
    """

    #: Sequences at least this long use per-head oneDNN attention on CPU; shorter ones the
    #: batched SDPA kernel (the per-head loop's Python overhead dominates for short ones).
    loop_attention_min_len = 160
    #: Tokens per feed-forward chunk on the CPU path (0: the whole batch at once).
    ffn_chunk_tokens = 1024
    #: Longest position-bias table kept between calls (H × n² floats: 8 heads, 2,048 → 134 MB).
    max_cached_bias_len = 2048
    #: Use the compiled attention kernels (:mod:`mtdp.models.kernels`) when they are available.
    use_kernels = True

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        cfg = encoder.config
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.eps = cfg.layer_norm_epsilon
        self._key: tuple | None = None
        self._layers: list[dict[str, torch.Tensor]] = []
        self._bias: torch.Tensor | None = None  # [H, Lmax, Lmax] contiguous
        self._bias_vec: torch.Tensor | None = None  # [H, 2c+1], see _bias_vector
        self.use_onednn = _onednn_linear_available()
        # MTDP_ATTENTION=sdpa forces the batched SDPA kernel (one op per layer): better on a
        # heavily oversubscribed machine, where each of the per-head loop's many small parallel
        # regions can wait for a descheduled thread; "loop" forces the per-head path.
        mode = os.environ.get("MTDP_ATTENTION", "auto").lower()
        if mode not in ("auto", "loop", "sdpa"):
            raise ValueError(f"MTDP_ATTENTION must be auto, loop or sdpa, not {mode!r}")
        if mode == "sdpa":
            self.loop_attention_min_len = 1 << 62
        elif mode == "loop":
            self.loop_attention_min_len = 0

    @staticmethod
    def supports(encoder: nn.Module) -> bool:
        """True for a non-gated ReLU T5 encoder (the student's architecture)."""
        cfg = getattr(encoder, "config", None)
        return cfg is not None and not cfg.is_gated_act and cfg.dense_act_fn == "relu" \
            and not cfg.is_decoder

    def __getstate__(self) -> dict:
        # Derived tensors are a cache: never pickle them (rebuilt on first use).
        return {**self.__dict__, "_key": None, "_layers": [], "_bias": None, "_bias_vec": None}

    # -- cached derived tensors ----------------------------------------------------------
    def _params_key(self) -> tuple:
        # Inference tensors (made under torch.inference_mode) have no version counter; they
        # can only change in place inside inference mode, which mtdp never does to weights.
        return tuple((p.data_ptr(), None if p.is_inference() else p._version, p.dtype,
                      p.device) for p in self.encoder.parameters())

    def _refresh(self) -> None:
        key = self._params_key()
        if key == self._key:
            return
        stack = self.encoder.encoder
        layers = []
        for blk in stack.block:
            sa, ff = blk.layer[0], blk.layer[1]
            att, dense = sa.SelfAttention, ff.DenseReluDense
            wqkv = torch.cat([att.q.weight, att.k.weight, att.v.weight])
            layers.append({
                # RMSNorm(x) @ W.T == (x * rsqrt(mean x²)) @ (W * g).T: fold g into W.
                "wqkv": (wqkv * sa.layer_norm.weight).contiguous(),
                "wo": att.o.weight.contiguous(),
                "wi": (dense.wi.weight * ff.layer_norm.weight).contiguous(),
                "wo_ff": dense.wo.weight.contiguous(),
            })
            layers[-1]["packed"] = self._pack(layers[-1], att.n_heads * att.key_value_proj_dim)
        self._layers = layers
        self._bias = self._bias_vec = None
        self._key = key

    def _pack(self, p: dict[str, torch.Tensor], hd: int) -> dict[str, torch.Tensor]:
        """The weights the oneDNN path multiplies by, reordered once into oneDNN's blocked
        layout (``mkldnn::_reorder_linear_weight``): otherwise every call repacks them, which
        costs 3-10 % of each GEMM (25 % for short sequences). A second copy of the weights
        (75 MB for the paper student). Plain weights where unavailable."""
        w = {"wq": p["wqkv"][:hd], "wk": p["wqkv"][hd:2 * hd], "wqkv": p["wqkv"],
             "wo": p["wo"], "wi": p["wi"], "wo_ff": p["wo_ff"]}
        if not (self.use_onednn and p["wqkv"].device.type == "cpu"
                and p["wqkv"].dtype == torch.float32):
            return w
        try:
            return {k: torch.ops.mkldnn._reorder_linear_weight(v.contiguous())
                    for k, v in w.items()}
        except (AttributeError, RuntimeError):  # an older or differently built torch
            return w

    def _position_bias(self, length: int) -> torch.Tensor:
        """``[H, length, length]`` contiguous relative position bias (T5 encoder buckets)."""
        if self._bias is None or self._bias.shape[-1] < length:
            att0 = self.encoder.encoder.block[0].layer[0].SelfAttention
            dev = att0.relative_attention_bias.weight.device
            if length > self.max_cached_bias_len:  # rare giant protein: don't keep it around
                return att0.compute_bias(length, length, device=dev)[0].contiguous()
            # Grow geometrically so a stream of slowly increasing lengths rebuilds rarely.
            n = min(max(length, 256 if self._bias is None else 2 * self._bias.shape[-1]),
                    self.max_cached_bias_len)
            self._bias = att0.compute_bias(n, n, device=dev)[0].contiguous()
        if self._bias.shape[-1] == length:
            return self._bias
        # T5's encoder bias depends only on j - i: the top-left block is the bias for `length`.
        return self._bias[:, :length, :length].contiguous()

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``[B, L, d_model]``, as ``T5EncoderModel(...).last_hidden_state``."""
        self._refresh()
        stack = self.encoder.encoder
        B, L = input_ids.shape
        weight = stack.embed_tokens.weight
        if self.use_onednn and weight.device.type == "cpu" and weight.dtype == torch.float32 \
                and not torch.is_autocast_enabled("cpu") and B * L > 0:
            lengths = attention_mask.sum(dim=1)
            prefix = torch.arange(L, device=lengths.device)[None, :] < lengths[:, None]
            if bool((prefix == attention_mask.bool()).all()):  # right-padded (our tokenizer)
                return self._packed(input_ids, prefix, lengths.tolist())
        x = stack.embed_tokens(input_ids)
        # Under CUDA autocast q/k/v are bf16/fp16: build the [B, H, L, L] mask in that dtype
        # (half the bytes of an fp32 one, and SDPA would cast it anyway).
        cuda_amp = x.device.type == "cuda" and torch.is_autocast_enabled("cuda")
        bias = self._position_bias(L).to(torch.get_autocast_dtype("cuda") if cuda_amp
                                         else x.dtype)  # [H, L, L]
        valid = attention_mask.bool()
        if not bool(valid.all()):
            # Padded keys get the dtype's minimum, exactly as transformers' mask does.
            bias = bias.unsqueeze(0).masked_fill(~valid[:, None, None, :],
                                                 torch.finfo(bias.dtype).min).contiguous()
        else:
            bias = bias.unsqueeze(0)  # [1, H, L, L], broadcast over the batch
        onednn = self.use_onednn and x.device.type == "cpu" and x.dtype == torch.float32 \
            and not torch.is_autocast_enabled("cpu")
        x = x.reshape(B * L, -1)
        for p in self._layers:
            h = F.rms_norm(x, (x.shape[-1],), None, self.eps)
            if onednn:
                pk = p["packed"]
                qkv = _onednn_linear(h, pk["wqkv"])
                o = self._attention(qkv, bias, B, L, onednn=True)
                x = _onednn_linear(o, pk["wo"], add=x)  # x + o @ Wo.T in one call
                h = F.rms_norm(x, (x.shape[-1],), None, self.eps)
                x = _onednn_linear(_onednn_linear(h, pk["wi"], relu=True), pk["wo_ff"], add=x)
            else:
                qkv = F.linear(h, p["wqkv"])
                o = self._attention(qkv, bias, B, L, onednn=False)
                x = x + F.linear(o, p["wo"])
                h = F.rms_norm(x, (x.shape[-1],), None, self.eps)
                x = x + F.linear(torch.relu(F.linear(h, p["wi"])), p["wo_ff"])
        x = F.rms_norm(x, (x.shape[-1],), stack.final_layer_norm.weight, self.eps)
        return x.view(B, L, -1)

    def _packed(self, input_ids: torch.Tensor, valid: torch.Tensor, lengths: list[int]
                ) -> torch.Tensor:
        """CPU/oneDNN forward on the *packed* real tokens: padding costs no GEMM work at all.

        Tokens of all sequences are concatenated to ``[T, d]``, and the hidden state is updated
        in place layer after layer. Per layer: each long sequence gets its q, k, v from its own
        rows and attends over exactly its ``l × l`` block — all heads of all long sequences in
        one call to the compiled kernel, or head by head with torch ops; short ones are
        gathered into one padded SDPA call (where per-head calls would cost more than they
        save); then the output projection and the feed-forward run in row chunks. Working sets
        stay a sequence or a chunk in size, so they stay in cache, and the allocator hands back
        the same blocks every time: one ``[T, 3d]`` qkv tensor per layer would be fresh
        (page-faulted) memory on every call. Padding positions come back as zeros.
        """
        stack = self.encoder.encoder
        B, L = input_ids.shape
        rows = valid.reshape(-1).nonzero().squeeze(1)  # packed row -> position in [B*L]
        x = stack.embed_tokens(input_ids.reshape(-1)[rows])  # [T, d]
        T, d = x.shape
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        long = [b for b in range(B) if lengths[b] >= self.loop_attention_min_len]
        short = [b for b in range(B) if 0 < lengths[b] < self.loop_attention_min_len]
        plan = self._short_plan(short, starts, lengths, x.dtype) if short else None
        out = torch.empty(T, self.num_heads * self.d_kv, dtype=x.dtype)  # reused by every layer
        compiled = kernels.attention_heads() if self.use_kernels and long else None
        g, offsets = None, []
        if long:
            # Keys reversed: head h's bias at (i, j') is g[h, offset + i + j'] (_qkv_reversed).
            g, centre = self._bias_vector(max(lengths[b] for b in long))
            offsets = [centre - (lengths[b] - 1) for b in long]
        chunk = self.ffn_chunk_tokens or T
        spans = [(starts[b], starts[b] + lengths[b]) for b in long]
        for p in self._layers:
            self._long_attention(x, out, p, spans, g, offsets, compiled)
            if plan is not None:
                self._short_attention(x, out, p["packed"], plan)
            self._output_and_ffn(x, out, p["packed"], chunk)
        for c in range(0, T, chunk):  # final norm in place, chunk by chunk (no [T, d] temps)
            xc = x[c:c + chunk]
            xc.copy_(F.rms_norm(xc, (d,), stack.final_layer_norm.weight, self.eps))
        if T == B * L:  # no padding in the batch: the packed rows are the output
            return x.view(B, L, d)
        full = x.new_zeros(B * L, d)
        full[rows] = x
        return full.view(B, L, d)

    def _short_plan(self, short: list[int], starts: list[int], lengths: list[int],
                    dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Short sequences run as one padded SDPA batch gathered from their packed rows:
        ``(rows, index [Bs, Ls], valid [Bs, Ls], bias)``, where index ``len(rows)`` (an
        appended zero row) stands for padding."""
        Ls = max(lengths[b] for b in short)
        s_rows = torch.cat([torch.arange(starts[b], starts[b] + lengths[b]) for b in short])
        pos = torch.arange(Ls)
        s_start = torch.tensor([0] + [lengths[b] for b in short[:-1]]).cumsum(0)
        s_len = torch.tensor([lengths[b] for b in short])
        sidx = torch.where(pos[None, :] < s_len[:, None], s_start[:, None] + pos[None, :],
                           len(s_rows))  # [Bs, Ls]
        s_valid = sidx < len(s_rows)
        s_bias = self._position_bias(Ls).unsqueeze(0).masked_fill(
            ~s_valid[:, None, None, :], torch.finfo(dtype).min).contiguous()
        return s_rows, sidx, s_valid, s_bias

    def _long_attention(self, x: torch.Tensor, out: torch.Tensor, p: dict,
                        spans: list[tuple[int, int]], g: torch.Tensor | None,
                        offsets: list[int], compiled) -> None:
        """Attention of every long sequence (rows ``spans`` of the packed ``x``) into ``out``:
        all heads in one compiled call, or head by head with torch ops."""
        if not spans:
            return
        d = x.shape[1]
        qkv = [self._qkv_reversed(F.rms_norm(x[a:b], (d,), None, self.eps), p)
               for a, b in spans]
        outs = [out[a:b] for a, b in spans]
        if compiled is not None:  # every head of every sequence in one call
            compiled([t[0] for t in qkv], [t[1] for t in qkv], [t[2] for t in qkv], g,
                     offsets, outs)
        else:
            for (q, k, vt), off, o in zip(qkv, offsets, outs):
                _heads(q, k, vt, g, off, o.view(o.shape[0], self.num_heads, self.d_kv))

    def _short_attention(self, x: torch.Tensor, out: torch.Tensor, pk: dict,
                         plan: tuple[torch.Tensor, ...]) -> None:
        """Attention of the short sequences as one padded SDPA batch (see :meth:`_short_plan`)."""
        s_rows, sidx, s_valid, s_bias = plan
        s_qkv = _onednn_linear(F.rms_norm(x[s_rows], (x.shape[1],), None, self.eps), pk["wqkv"])
        ext = torch.cat([s_qkv, s_qkv.new_zeros(1, s_qkv.shape[1])])
        Bs, Ls = sidx.shape
        so = self._attention(ext[sidx.reshape(-1)], s_bias, Bs, Ls, onednn=False)
        out[s_rows] = so.view(Bs, Ls, self.num_heads * self.d_kv)[s_valid]

    def _output_and_ffn(self, x: torch.Tensor, out: torch.Tensor, pk: dict, chunk: int) -> None:
        """``x + o Woᵀ``, then ``+ relu(RMSNorm(.) Wiᵀ) Woᵀ``, in row chunks written back over
        ``x`` (the ``d_ff``-wide intermediate stays in cache)."""
        d = x.shape[1]
        for c in range(0, x.shape[0], chunk):
            xc = x[c:c + chunk]
            y = _onednn_linear(out[c:c + chunk], pk["wo"], add=xc)
            h = F.rms_norm(y, (d,), None, self.eps)
            xc.copy_(_onednn_linear(_onednn_linear(h, pk["wi"], relu=True), pk["wo_ff"],
                                    add=y))

    def _qkv_reversed(self, h: torch.Tensor, p: dict) -> tuple[torch.Tensor, ...]:
        """One sequence's q [H, n, dk], k [H, n, dk] and vᵀ [H, dk, n] from its normed hidden
        states ``h`` [n, d], with keys and values in *reverse* order.

        T5's bias depends only on j - i, so with keys reversed (j = n-1-j') it depends on
        i + j': row i of a head's biased score matrix is a sliding window over one short
        vector (:meth:`_bias_vector`), not a row of an [n, n] table: adding it reads a few KB
        from L1 instead of streaming [H, n, n] floats (32 MB at 1,000 aa) through memory. The
        softmax-weighted sum over keys is the same in any order, so the output is unchanged.
        """
        H, dk = self.num_heads, self.d_kv
        n, hd = h.shape[0], H * dk
        h_rev = h.flip(0)
        pk = p["packed"]
        q = _onednn_linear(h, pk["wq"]).view(n, H, dk).transpose(0, 1).contiguous()
        k = _onednn_linear(h_rev, pk["wk"]).view(n, H, dk).transpose(0, 1).contiguous()
        # vᵀ straight from Wv hᵀ, already the [H, dk, n] layout the second GEMM wants.
        vt = _onednn_linear(p["wqkv"][2 * hd:], h_rev).view(H, dk, n)
        return q, k, vt

    def _bias_vector(self, length: int) -> tuple[torch.Tensor, int]:
        """``(g, c)`` with ``g`` [H, 2c+1] contiguous and ``g[h, c - r]`` the position bias of
        head ``h`` at relative position ``r = j - i``, for every ``|r| < length``."""
        if self._bias_vec is None or self._bias_vec.shape[1] < 2 * length - 1:
            att0 = self.encoder.encoder.block[0].layer[0].SelfAttention
            # Grow geometrically: a stream of slowly increasing lengths rebuilds rarely.
            c = max(length, 1024 if self._bias_vec is None else self._bias_vec.shape[1]) - 1
            rel = c - torch.arange(2 * c + 1, device=att0.relative_attention_bias.weight.device)
            buckets = att0._relative_position_bucket(
                rel, bidirectional=True, num_buckets=att0.relative_attention_num_buckets,
                max_distance=att0.relative_attention_max_distance)
            self._bias_vec = att0.relative_attention_bias(buckets).t().contiguous()
        return self._bias_vec, (self._bias_vec.shape[1] - 1) // 2

    def _attention(self, qkv: torch.Tensor, bias: torch.Tensor, B: int, L: int,
                   onednn: bool) -> torch.Tensor:
        """Softmax(q kᵀ + bias) v for all heads; ``qkv`` is ``[B*L, 3*H*d_kv]``."""
        H, dk = self.num_heads, self.d_kv
        if onednn and L >= self.loop_attention_min_len:
            # [3, B, H, L, dk] q/k, and vᵀ as [B, H, dk, L] (the weight layout linear wants).
            qk = qkv.view(B, L, 3, H, dk)[:, :, :2].permute(2, 0, 3, 1, 4).contiguous()
            vt = qkv.view(B, L, 3, H, dk)[:, :, 2].permute(0, 2, 3, 1).contiguous()
            out = torch.empty(B, L, H, dk, dtype=qkv.dtype, device=qkv.device)
            for b in range(B):
                bb = bias[b if bias.shape[0] > 1 else 0]
                for h in range(H):
                    scores = _onednn_linear(qk[0, b, h], qk[1, b, h]).add_(bb[h])  # q kᵀ + bias
                    torch.ops.aten._softmax.out(scores, -1, False, out=scores)  # in place
                    out[b, :, h] = _onednn_linear(scores, vt[b, h])
            return out.view(B * L, H * dk)
        qkv = qkv.view(B, L, 3, H, dk).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias.to(qkv.dtype),
                                           scale=1.0)  # T5 does not scale scores
        return o.transpose(1, 2).reshape(B * L, H * dk)


def _onednn_linear(x: torch.Tensor, w: torch.Tensor, *, relu: bool = False,
                add: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T`` through oneDNN, optionally followed by ReLU or ``+ add`` (fused post-ops)."""
    if add is not None:
        return torch.ops.mkldnn._linear_pointwise(x, add, w, None, "add")
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "relu" if relu else "none", [], "")


def _heads(q: torch.Tensor, k: torch.Tensor, vt: torch.Tensor, g: torch.Tensor, offset: int,
           out: torch.Tensor) -> None:
    """One sequence's attention with torch ops, head after head (no [H, n, n] tensor):
    ``out[:, h] = softmax(q[h] k[h]ᵀ + B) vt[h]ᵀ`` with ``B[i, j] = g[h, offset + i + j]``
    (see ``FastT5Encoder._qkv_reversed``); ``out`` is [n, H, dk]. The compiled
    ``mtdp.t5_attention_heads`` does the same for all heads and sequences in one call."""
    n = q.shape[1]
    for hh in range(q.shape[0]):
        # q kᵀ, then + bias in place (oneDNN's fused "add" post-op with a full [n, n] operand
        # doubles the score GEMM's time), then softmax in place.
        scores = _onednn_linear(q[hh], k[hh])
        scores.add_(g[hh].as_strided((n, n), (1, 1), g[hh].storage_offset() + offset))
        torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        out[:, hh] = _onednn_linear(scores, vt[hh])
