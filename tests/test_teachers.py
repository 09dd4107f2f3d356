"""Teacher loaders on tiny local checkpoints written by the tests themselves."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdp.embed import embed_sequences
from mtdp.models.registry import load_embedder
from mtdp.models.teachers import (ESM2_MODELS, PROT_T5_HUB, REGISTRY, load_teacher,
                           save_esm2_checkpoint, tiny_random_esm2, tiny_random_t5)

SEQS = ["MKVLAAGGLLW", "MK", "ACDEFGHIKLMNPQRSTVWYX" * 2]


def test_registry_names():
    for name in ESM2_MODELS:
        assert name in REGISTRY
    assert "prot_t5_xl_uniref50" in REGISTRY and PROT_T5_HUB == "Rostlab/prot_t5_xl_uniref50"
    assert set(ESM2_MODELS) >= {"esm2_t6_8M_UR50D", "esm2_t33_650M_UR50D"}


def test_tiny_teachers_are_deterministic_and_labelled():
    a, b = tiny_random_esm2(), tiny_random_esm2()
    assert not a.pretrained and a.source == "random-init" and "random" in a.name
    np.testing.assert_array_equal(embed_sequences(a, SEQS), embed_sequences(b, SEQS))
    assert not tiny_random_t5().pretrained


def test_esm2_mean_excludes_bos_eos():
    t = tiny_random_esm2()
    _, _, tokens = t.batch_converter([("0", SEQS[0])])
    with torch.inference_mode():
        rep = t.model(tokens, repr_layers=[t.num_layers])["representations"][t.num_layers]
    expected = rep[0, 1:len(SEQS[0]) + 1].mean(0).numpy()   # extract.py --include mean
    np.testing.assert_allclose(embed_sequences(t, [SEQS[0]])[0], expected, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_random_esm2, tiny_random_t5])
def test_batched_equals_one_at_a_time(make):
    t = make()
    batched = embed_sequences(t, SEQS)
    single = np.stack([embed_sequences(t, [s])[0] for s in SEQS])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_esm2_local_checkpoint_round_trip(tmp_path):
    t = tiny_random_esm2(seed=3)
    path = save_esm2_checkpoint(t, tmp_path / "esm2_t2_tiny_test.pt")
    loaded = load_teacher(str(path))
    assert loaded.name == "esm2_t2_tiny_test" and loaded.dim == 64
    np.testing.assert_allclose(embed_sequences(loaded, SEQS), embed_sequences(t, SEQS), atol=1e-6)
    info = loaded.describe()
    assert len(info["sha256"]) == 64 and info["source"] == str(path)


def test_prott5_local_directory_round_trip(tmp_path):
    t = tiny_random_t5(seed=5)
    t.model.save_pretrained(tmp_path / "prot_t5_tiny")
    loaded = load_embedder(str(tmp_path / "prot_t5_tiny"), device="cpu")
    assert loaded.name == "prot_t5_tiny" and loaded.dim == 32
    np.testing.assert_allclose(embed_sequences(loaded, SEQS), embed_sequences(t, SEQS), atol=1e-6)


def test_t5_mean_excludes_eos():
    t = tiny_random_t5()
    ids = torch.tensor([t.tokenizer.encode(SEQS[1])])
    with torch.inference_mode():
        h = t.model(input_ids=ids).last_hidden_state
    np.testing.assert_allclose(embed_sequences(t, [SEQS[1]])[0], h[0, :2].mean(0).numpy(),
                               atol=1e-6)


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("esm3_huge")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a fair-esm checkpoint"):
        load_teacher(str(bad))
    with pytest.raises(ValueError, match="unknown model"):
        load_embedder("definitely-not-a-model")


def test_hub_name_fails_clearly_offline(monkeypatch):
    import esm

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(esm.pretrained, "load_model_and_alphabet_hub", offline)
    with pytest.raises(RuntimeError, match="pass the local path"):
        load_teacher("esm2_t6_8M_UR50D")


def test_protbert_matches_transformers_tokenizer_and_forward(tmp_path) -> None:
    """ProtBert-BFD's path: our ids equal BertTokenizer's on a ProtBert vocab.txt, the mean
    excludes [CLS]/[SEP], and a save_pretrained folder loads as a teacher (a foreign
    vocabulary is refused)."""
    from transformers import BertTokenizer

    from mtdp.models import protbert
    from mtdp.models.registry import load_embedder

    teacher = load_embedder("tiny-random-bert", device="cpu")
    folder = tmp_path / "protbert"
    teacher.model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(protbert.VOCAB) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=False)
    seqs = ["MKTAYIAKQRX", "GGSLLVWC"]
    with torch.no_grad():
        want = []
        for s in seqs:
            x = tok(" ".join(s), return_tensors="pt")
            assert x["input_ids"][0].tolist() == teacher.encode([s])[0][0].tolist()
            h = teacher.model(**x).last_hidden_state[0]
            want.append(h[1:-1].mean(0).numpy())
    got = embed_sequences(load_embedder(str(folder), device="cpu"), seqs)
    np.testing.assert_allclose(got, np.stack(want), rtol=0, atol=1e-5)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "A", "B"]) + "\n")
    with pytest.raises(ValueError, match="not ProtBert's vocabulary"):
        load_embedder(str(folder), device="cpu")
