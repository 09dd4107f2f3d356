"""Student tokenizer: ProtT5 id layout, round trip, batch padding."""
from __future__ import annotations

import torch

from mtdp.tokenizer import (EOS_ID, MASK_ID, PAD_ID, UNK_ID, VOCAB_SIZE, ResidueTokenizer,
                            residue_mask)


def test_prott5_layout():
    tok = ResidueTokenizer()
    v = tok.vocab()
    assert (v["<pad>"], v["</s>"], v["<unk>"]) == (0, 1, 2)
    # ProtT5's spiece order: A L G V S R E D T I P K F Q N Y M H W C X B O U Z at ids 3..27
    assert [v[a] for a in "ALGVSREDTIPKFQNYMHWCXBOUZ"] == list(range(3, 28))
    assert VOCAB_SIZE == 128 and MASK_ID == 127
    assert MASK_ID not in {i for k, i in v.items() if k != "<mask>"}


def test_round_trip_and_unknown():
    tok = ResidueTokenizer()
    seq = "MKVLAACDEFGHIKLMNPQRSTVWYX"
    ids = tok.encode(seq)
    assert ids[-1] == EOS_ID and len(ids) == len(seq) + 1
    assert tok.decode(ids) == seq
    assert tok.encode("M#")[:2] == [tok.encode("M")[0], UNK_ID]


def test_batch_encode_pads_to_longest_only():
    tok = ResidueTokenizer()
    ids, mask = tok.batch_encode(["MKV", "A", "mkvla"])
    assert ids.shape == (3, 6)
    assert ids[1].tolist() == [tok.encode("A")[0], EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert mask.sum(1).tolist() == [4, 2, 6]
    assert torch.equal(ids[2], torch.tensor(tok.encode("MKVLA")))  # lower case accepted
    for row, s in zip(ids, ["MKV", "A", "MKVLA"]):
        assert row[: len(s) + 1].tolist() == tok.encode(s)
    assert residue_mask(ids).sum(1).tolist() == [3, 1, 5]
