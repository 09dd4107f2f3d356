"""The student: a small T5 encoder with masked mean pooling, an embedding projection, an MLM
head and one distillation head per teacher.

Paper configuration: ``T5EncoderModel`` with d_model 512, d_ff 2048, 8 heads, d_kv 64, 6 layers,
vocabulary 128 (~19M encoder parameters); per-protein embedding = Linear(512 → 1280) of the
mean of the residue states (pad and ``</s>`` excluded).

A trained student is a self-describing directory (``config.json`` + ``model.safetensors``)
loaded with :func:`load_student`; :class:`StudentEmbedder` serves it as an
:class:`~mtdp.models.base.Embedder`. Inference runs the fused path of :mod:`.fast_t5`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..io import atomic_path, write_text
from ..tokenizer import MASK_ID, VOCAB_SIZE, ResidueTokenizer, residue_mask
from .base import Embedder
from .fast_t5 import FastT5Encoder
from .pooling import masked_mean

STUDENT_FORMAT = "mtdp-student"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
POOLINGS = ("masked", "reference")


@dataclass
class StudentConfig:
    """Architecture of the student (all fields saved in ``config.json``)."""

    d_model: int = 512
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    d_kv: int = 64
    vocab_size: int = VOCAB_SIZE
    #: Size of the per-protein embedding (the projection's output).
    embed_dim: int = 1280
    dropout: float = 0.1
    feed_forward_proj: str = "relu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    #: Truncation length the student is meant to see (the paper's 1,000).
    max_len: int = 1000
    #: ``masked``: the embedding is the mean over real residues (mtdp's); ``reference``: as
    #: the released MTDP model computes it — ids padded to ``max_len + 1`` tokens and the
    #: mean taken over all of them, ``</s>`` and pads included (reproduces its vectors).
    pooling: str = "masked"
    #: Standardise pooled states (a protein's or a window's mean state) across proteins with
    #: running statistics before the projection: a protein's mean state varies little from
    #: protein to protein, so without it the heads need large weights, which Adam reaches only
    #: after thousands of steps.
    pool_norm: bool = False
    #: Teacher name → teacher embedding dimension; one distillation head each.
    teachers: dict[str, int] = field(default_factory=dict)
    #: Teacher name → dimension of its per-residue states; one per-residue head each
    #: (d_model → dim on every hidden state), trained by per-residue distillation.
    residue_teachers: dict[str, int] = field(default_factory=dict)
    #: Free-form provenance (training run id, teachers' sources, ...).
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "StudentConfig":
        """``paper`` (the published 6-layer student) or ``tiny`` (2 layers, d_model 64, for
        tests and CPU demos)."""
        presets = {
            "paper": {},
            "tiny": dict(d_model=64, d_ff=256, num_layers=2, num_heads=4, d_kv=16, embed_dim=128),
            # A CPU-trainable middle ground for real distillation demos on a laptop.
            "small": dict(d_model=256, d_ff=1024, num_layers=4, num_heads=4, d_kv=64,
                          embed_dim=512),
        }
        if name not in presets:
            raise ValueError(f"unknown student preset {name!r}; choose from {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown student config field(s): {sorted(unknown)}")
        return cls(**d)


class RunningStandardize(nn.Module):
    """``(x - mean) / std`` per feature with running statistics (updated in training from
    each batch, detached; used as they stand in both modes, so a batch of 8 proteins adds no
    noise and training and inference compute the same map)."""

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.dim() == 2 and len(x) > 1:
            with torch.no_grad():
                m, v = x.float().mean(0), x.float().var(0)
                a = 1.0 if int(self.seen) == 0 else self.momentum
                self.mean.lerp_(m, a)
                self.var.lerp_(v, a)
                self.seen += 1
        return (x - self.mean.to(x.dtype)) / torch.sqrt(self.var + self.eps).to(x.dtype)


class StudentModel(nn.Module):
    """T5 encoder + pooling + projection + MLM head + per-teacher heads."""

    def __init__(self, config: StudentConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import T5Config, T5EncoderModel

        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {config.pooling!r}")
        self.config = config
        t5 = T5Config(
            vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv,
            d_ff=config.d_ff, num_layers=config.num_layers, num_heads=config.num_heads,
            dropout_rate=config.dropout, feed_forward_proj=config.feed_forward_proj,
            relative_attention_num_buckets=config.relative_attention_num_buckets,
            relative_attention_max_distance=config.relative_attention_max_distance,
            pad_token_id=0, eos_token_id=1, is_encoder_decoder=False, use_cache=False,
        )
        # SDPA keeps T5's relative position bias exact (it is passed as the additive mask).
        t5._attn_implementation = attn_implementation
        self.encoder = T5EncoderModel(t5)
        self.proj = nn.Linear(config.d_model, config.embed_dim)
        self.pool_norm = RunningStandardize(config.d_model) if config.pool_norm else None
        self.mlm_head = nn.Linear(config.d_model, config.vocab_size)
        self.teacher_heads = nn.ModuleDict(
            {name: nn.Linear(config.embed_dim, dim) for name, dim in config.teachers.items()})
        self.residue_heads = nn.ModuleDict(
            {name: nn.Linear(config.d_model, dim)
             for name, dim in config.residue_teachers.items()})
        #: Use the fused inference path in :meth:`encode` (set False to time/compare the stock one).
        self.fast_inference = True
        self._fast: FastT5Encoder | None = None  # built lazily; holds no parameters of its own

    @property
    def mask_id(self) -> int:
        return MASK_ID

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, L, d_model].

        In inference (eval mode, no autograd) this runs :class:`FastT5Encoder`, a fused
        re-implementation of the same computation on the same parameters (equal to the stock
        ``T5EncoderModel`` at every real position within float32 rounding, see
        tests/test_student_speed_equivalence.py; on CPU padding positions are zeros);
        training and anything needing gradients uses the stock ``transformers`` module.
        """
        if self.fast_inference and not self.training and not torch.is_grad_enabled() \
                and FastT5Encoder.supports(self.encoder):
            if self._fast is None:
                self._fast = FastT5Encoder(self.encoder)
            return self._fast(input_ids, attention_mask)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pool_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns ``hidden`` [B, L, d], ``pooled`` [B, d], ``embedding`` [B, embed_dim] and
        ``mlm_logits`` [B, L, vocab].

        ``pool_mask`` defaults to the real residues of ``input_ids``; pass the residue mask of
        the *unmasked* input when ``input_ids`` contains MLM mask tokens.
        """
        hidden = self.encode(input_ids, attention_mask)
        if pool_mask is None:
            pool_mask = residue_mask(input_ids)
        pooled = masked_mean(hidden, pool_mask)
        return {"hidden": hidden, "pooled": pooled, "embedding": self.project(pooled),
                "mlm_logits": self.mlm_head(hidden)}

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled states (of proteins, windows or single residues) → embeddings: the same
        affine map for all, so a protein's embedding is the mean of its residues'."""
        if self.pool_norm is not None:
            pooled = self.pool_norm(pooled)
        return self.proj(pooled)

    def teacher_logits(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each teacher head applied to the per-protein embedding."""
        return {name: head(embedding) for name, head in self.teacher_heads.items()}

    def teacher_vectors(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student's own prediction of each teacher's per-protein vector, in the
        teacher's units (its heads' outputs read with the units saved at training,
        ``metadata["head_units"]``; teachers without saved units are left out)."""
        units = self.config.metadata.get("head_units", {})
        out = {}
        for name, head in self.teacher_heads.items():
            if name in units:
                u = units[name]
                mean = torch.tensor(u["mean"], device=embedding.device)
                std = torch.tensor(u["std"], device=embedding.device)
                out[name] = head(embedding).float() * std + mean
        return out

    def embed_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     per_residue: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-protein embeddings, and optionally per-residue ones (projection of each residue
        state, so their mean equals the per-protein embedding)."""
        if self.config.pooling == "reference":
            return self._reference_embed(input_ids, attention_mask, per_residue)
        hidden = self.encode(input_ids, attention_mask)
        rmask = residue_mask(input_ids)
        # Pooling and the (folded, large-weight) projection in fp32 under any autocast: in
        # bf16 they cost the shipped student's vectors cosine 0.9955 to fp32, in fp32 nothing.
        with torch.autocast(hidden.device.type, enabled=False):
            hidden = hidden.float()
            emb = self.project(masked_mean(hidden, rmask))
            return emb, (self.project(hidden) if per_residue else None)

    def _reference_embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         per_residue: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``pooling="reference"``: pad to ``max_len + 1`` tokens and average all positions
        (the stock encoder: the fused path does not compute pad positions)."""
        width = self.config.max_len + 1
        extra = width - input_ids.shape[1]
        if extra < 0:
            raise ValueError(f"reference pooling takes at most {self.config.max_len} residues "
                             f"(got {input_ids.shape[1] - 1})")
        ids = torch.nn.functional.pad(input_ids, (0, extra), value=0)
        mask = torch.nn.functional.pad(attention_mask, (0, extra), value=0)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        emb = self.project(hidden.mean(dim=1))
        return emb, (self.project(hidden[:, :input_ids.shape[1]]) if per_residue else None)

    @torch.no_grad()
    def fold_pool_norm(self) -> "StudentModel":
        """Fold the pooled-state standardisation (an affine map once trained) into the
        projection, leaving a plain student that computes the same embeddings."""
        if self.pool_norm is None:
            return self
        scale = 1.0 / torch.sqrt(self.pool_norm.var + self.pool_norm.eps)
        self.proj.bias.sub_(self.proj.weight @ (self.pool_norm.mean * scale))
        self.proj.weight.mul_(scale[None, :])
        self.pool_norm = None
        self.config.pool_norm = False
        return self

    def num_parameters(self, encoder_only: bool = False) -> int:
        mod = self.encoder if encoder_only else self
        return sum(p.numel() for p in mod.parameters())

    # ---- persistence -------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created);
        ``dtype=torch.float16`` stores the weights at half the size (they load back into
        float32 parameters)."""
        from safetensors.torch import save_model

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"format": STUDENT_FORMAT, "mtdp_version": __version__,
                "config": self.config.to_dict()}
        model = self if dtype is None else copy.deepcopy(self).to(dtype)
        # Write weights first, config last: a directory with config.json is complete.
        # save_model de-duplicates T5's tied embedding (shared == embed_tokens).
        with atomic_path(d / WEIGHTS_FILE) as tmp:
            save_model(model, str(tmp), metadata={"format": STUDENT_FORMAT})
        write_text(d / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True))
        return d


def is_student_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory saved by :meth:`StudentModel.save`."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == STUDENT_FORMAT
    except (json.JSONDecodeError, OSError):
        return False


def load_student(directory: str | os.PathLike, map_location: str | torch.device = "cpu"
                 ) -> StudentModel:
    """Load a student saved by :meth:`StudentModel.save` (in eval mode)."""
    from safetensors.torch import load_model

    d = Path(directory)
    if not is_student_dir(d):
        raise FileNotFoundError(f"{d} is not an mtdp student directory (expected {CONFIG_FILE} "
                                f"with format {STUDENT_FORMAT!r} and {WEIGHTS_FILE})")
    meta = json.loads((d / CONFIG_FILE).read_text())
    model = StudentModel(StudentConfig.from_dict(meta["config"]))
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    load_model(model, str(weights), strict=True, device=str(map_location))
    return model.eval()


class StudentEmbedder(Embedder):
    """A trained (or randomly initialised) mtdp student as an :class:`Embedder`."""

    def __init__(self, model: StudentModel, name: str = "student", source: str = "",
                 pretrained: bool | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = ResidueTokenizer()
        # A student written by `mtdp student init` (or any random baseline) says so in its
        # config metadata; anything else was trained.
        if pretrained is None:
            pretrained = model.config.metadata.get("init") != "random"
        self.name, self.source, self.pretrained = name, source, pretrained
        self.dim = model.config.embed_dim
        self.max_len = model.config.max_len
        self.device = next(model.parameters()).device

    @property
    def pooling(self) -> str:
        """``masked`` or ``reference`` (see :class:`StudentConfig`)."""
        return self.model.config.pooling

    @pooling.setter
    def pooling(self, value: str) -> None:
        if value not in POOLINGS:
            raise ValueError(f"--pooling must be one of {POOLINGS}, not {value!r}")
        self.model.config.pooling = value

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pooling": self.pooling}

    def to(self, device: str | torch.device) -> "StudentEmbedder":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    @torch.inference_mode()
    def embed_batch(self, sequences, per_residue: bool = False):
        ids, mask = self.tokenizer.batch_encode(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        # bf16 autocast on GPU; on CPU as set_precision chose (fp32: exact and reproducible).
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"), \
                self.cpu_autocast():
            emb, res = self.model.embed_tokens(ids, mask, per_residue=per_residue)
        emb = emb.float().cpu()
        if not per_residue:
            return emb, None
        res = res.float().cpu()
        return emb, [res[i, :len(s)] for i, s in enumerate(sequences)]
