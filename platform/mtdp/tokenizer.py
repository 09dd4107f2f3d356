"""Residue-level tokenizer for the student, laid out like ProtT5's vocabulary.

ProtT5 (``Rostlab/prot_t5_xl_uniref50``) ids: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, residues
3..27 in the order ``A L G V S R E D T I P K F Q N Y M H W C X B O U Z``, then 100 T5 sentinel
ids up to a vocabulary of 128. We keep that layout (so a student can be initialised from, or
compared with, ProtT5 embeddings table-wise) and use the first sentinel slot, ``<extra_id_0>``
at id 127, as the dedicated MLM mask id.
"""
from __future__ import annotations

from typing import Sequence

import torch

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"
#: T5 sentinels count down from the top of the vocabulary: <extra_id_0> is vocab_size - 1.
VOCAB_SIZE = 128
MASK_ID = VOCAB_SIZE - 1
#: Ids of residues that MLM may predict / substitute (X and the rare letters excluded).
STANDARD_RESIDUE_IDS = tuple(3 + RESIDUES.index(a) for a in "ACDEFGHIKLMNPQRSTVWY")


class ResidueTokenizer:
    """Maps protein strings to ids (one id per residue, then ``</s>``) and back."""

    pad_id = PAD_ID
    eos_id = EOS_ID
    unk_id = UNK_ID
    mask_id = MASK_ID
    vocab_size = VOCAB_SIZE

    def __init__(self) -> None:
        self._to_id = {aa: 3 + i for i, aa in enumerate(RESIDUES)}
        self._to_aa = {i: aa for aa, i in self._to_id.items()}
        # A dense lookup table makes batch encoding a single indexing op.
        self._table = torch.full((128,), UNK_ID, dtype=torch.long)
        for aa, i in self._to_id.items():
            self._table[ord(aa)] = i
            self._table[ord(aa.lower())] = i

    def vocab(self) -> dict[str, int]:
        """Token string → id for the named tokens (sentinels other than the mask omitted)."""
        v = {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID, "<mask>": MASK_ID}
        v.update(self._to_id)
        return v

    def encode(self, sequence: str, add_eos: bool = True) -> list[int]:
        """Ids for one sequence; unknown characters become ``<unk>``."""
        ids = [self._to_id.get(ch.upper(), UNK_ID) for ch in sequence]
        return ids + [EOS_ID] if add_eos else ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Residue string for ids, stopping at ``</s>``; pad skipped, mask shown as ``?``."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == EOS_ID:
                break
            if i == PAD_ID:
                continue
            out.append(self._to_aa.get(i, "?" if i == MASK_ID else "X"))
        return "".join(out)

    def batch_encode(self, sequences: Sequence[str], add_eos: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` for a batch, padded only to the
        longest member (never to a fixed length)."""
        lengths = [len(s) + (1 if add_eos else 0) for s in sequences]
        width = max(lengths) if lengths else 0
        ids = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(sequences):
            if seq:
                codes = torch.frombuffer(bytearray(seq.encode("ascii", "replace")),
                                         dtype=torch.uint8).long().clamp_(max=127)
                ids[row, :len(seq)] = self._table[codes]
            if add_eos:
                ids[row, len(seq)] = EOS_ID
        mask = (ids != PAD_ID).long()
        return ids, mask


def residue_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask of real residues: pad and ``</s>`` excluded (what pooling averages over)."""
    return (input_ids != PAD_ID) & (input_ids != EOS_ID)
