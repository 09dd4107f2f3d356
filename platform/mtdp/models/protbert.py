"""ProtBert-BFD (Elnaggar et al. 2021; ``Rostlab/prot_bert_bfd``): a ``transformers``
``BertModel`` on space-separated residues, one of the paper's comparison models.

Per-protein = mean of the last layer over the residues, ``[CLS]`` and ``[SEP]`` excluded (as
the ProtTrans examples pool it). Ids are ProtBert's vocabulary — ``[PAD]`` 0, ``[UNK]`` 1,
``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4, then ``L A G V E S I K R D T P N Q F Y M H C W X U B Z
O`` — encoded here directly (one id per residue; a local checkpoint's ``vocab.txt`` is checked
against it). Weights: the hub name when online, or a local ``save_pretrained`` directory, the
same rule as ProtT5; ``tiny-random-bert`` is the same class with random weights for tests.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .base import Embedder
from .pooling import masked_mean

PROT_BERT_HUB = "Rostlab/prot_bert_bfd"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
RESIDUES = "LAGVESIKRDTPNQFYMHCWXUBZO"
VOCAB = SPECIALS + list(RESIDUES)
PAD, UNK, CLS, SEP = 0, 1, 2, 3


class BertTeacher(Embedder):
    """A ``BertModel`` in ProtBert's vocabulary; per-protein = mean over residues."""

    def __init__(self, model, name: str, source: str, pretrained: bool,
                 max_len: int = 1000) -> None:
        self.model = model.eval()
        self.name, self.source, self.pretrained = name, source, pretrained
        # Positions: [CLS] + residues + [SEP] must fit the model's position table.
        self.max_len = min(max_len, model.config.max_position_embeddings - 2)
        self.dim = model.config.hidden_size
        self.device = torch.device("cpu")
        self._table = torch.full((128,), UNK, dtype=torch.long)
        for i, aa in enumerate(RESIDUES):
            self._table[ord(aa)] = len(SPECIALS) + i

    def to(self, device: str | torch.device) -> "BertTeacher":
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.half()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def encode(self, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] residues [SEP]`` ids padded with ``[PAD]``, and the attention mask."""
        width = max(len(s) for s in sequences) + 2
        ids = torch.full((len(sequences), width), PAD, dtype=torch.long)
        for i, s in enumerate(sequences):
            codes = torch.frombuffer(bytearray(s.encode("ascii")), dtype=torch.uint8).long()
            ids[i, 0], ids[i, len(s) + 1] = CLS, SEP
            ids[i, 1:len(s) + 1] = self._table[codes]
        return ids, (ids != PAD).long()

    @torch.inference_mode()
    def embed_batch(self, sequences: Sequence[str], per_residue: bool = False):
        ids, mask = self.encode(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        rmask = (ids != PAD) & (ids != CLS) & (ids != SEP)
        emb = masked_mean(hidden, rmask).cpu()
        if not per_residue:
            return emb, None
        hidden = hidden.cpu()
        return emb, [hidden[i, 1:len(s) + 1] for i, s in enumerate(sequences)]


def check_vocab(folder: str | os.PathLike) -> None:
    """Refuse a checkpoint whose ``vocab.txt`` is not ProtBert's layout (ids would differ)."""
    path = Path(folder) / "vocab.txt"
    if not path.is_file():
        return
    theirs = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if theirs[:len(VOCAB)] != VOCAB:
        raise ValueError(f"{path} is not ProtBert's vocabulary (first tokens "
                         f"{theirs[:8]}); mtdp supports the ProtBert layout")


def load_protbert(name_or_path: str = PROT_BERT_HUB, pretrained: bool = True) -> BertTeacher:
    """ProtBert-BFD from the hub name or a local directory (``save_pretrained`` layout)."""
    from transformers import BertModel

    local = os.path.isdir(name_or_path)
    if local:
        check_vocab(name_or_path)
    try:
        model = BertModel.from_pretrained(name_or_path, add_pooling_layer=False)
    except Exception as exc:
        if local:
            raise
        raise RuntimeError(
            f"could not load {name_or_path} from the Hugging Face hub ({exc}). Offline? Set "
            "HF_HUB_OFFLINE=1 and pass a local directory with the model") from exc
    name = Path(name_or_path).name if local else name_or_path.split("/")[-1]
    return BertTeacher(model, name=name, source=os.path.abspath(name_or_path) if local
                       else name_or_path, pretrained=pretrained)


def tiny_random_bert(seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4
                     ) -> BertTeacher:
    """A tiny ``BertModel`` in ProtBert's vocabulary, random weights. NOT pretrained."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=4 * hidden,
                     max_position_embeddings=1026, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=PAD)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(cfg, add_pooling_layer=False)
    return BertTeacher(model, name="tiny-random-bert", source="random-init", pretrained=False)


def is_bert_dir(path: str | os.PathLike) -> bool:
    """A ``save_pretrained`` folder of a BERT model (``config.json`` with model_type bert)."""
    import json

    cfg = Path(path) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "bert"
    except (json.JSONDecodeError, OSError):
        return False
