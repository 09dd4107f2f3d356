"""Student model: size, masked pooling, save/load round trip."""
from __future__ import annotations

import json

import pytest
import torch

from mtdp.models.registry import load_embedder
from mtdp.models.student import StudentEmbedder
from mtdp.models.student import (StudentConfig, StudentModel, is_student_dir, load_student,
                          masked_mean)
from mtdp.tokenizer import ResidueTokenizer


def _tiny(**kw) -> StudentModel:
    torch.manual_seed(0)
    return StudentModel(StudentConfig.preset("tiny", dropout=0.0, **kw)).eval()


def test_paper_student_size():
    m = StudentModel(StudentConfig.preset("paper"))
    t5 = m.encoder.config
    assert (t5.d_model, t5.d_ff, t5.num_heads, t5.d_kv, t5.num_layers, t5.vocab_size) == \
        (512, 2048, 8, 64, 6, 128)
    assert 18e6 < m.num_parameters(encoder_only=True) < 20e6  # ~19M, as in the paper
    assert m.proj.out_features == 1280


def test_masked_mean_ignores_masked_positions():
    h = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [0.0], [0.0]]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(h, m).squeeze(-1).tolist() == [2.0, 0.0]


def test_pooling_ignores_padding_and_eos():
    m = _tiny()
    tok = ResidueTokenizer()
    seqs = ["MKVLAAGG", "MK", "ACDEFGHIKLMNPQRSTVWY" * 3]
    ids, mask = tok.batch_encode(seqs)
    with torch.inference_mode():
        batched, _ = m.embed_tokens(ids, mask)
        for i, s in enumerate(seqs):
            one_ids, one_mask = tok.batch_encode([s])
            single, _ = m.embed_tokens(one_ids, one_mask)
            torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=1e-5)
        # pooling really excludes </s>: a manual mean over residue states agrees
        hidden = m.encode(ids, mask)
        manual = m.proj(hidden[1, :2].mean(0))
        torch.testing.assert_close(batched[1], manual, atol=1e-5, rtol=1e-5)


def test_per_residue_mean_equals_protein_embedding():
    m = _tiny()
    emb = StudentEmbedder(m)
    e, res = emb.embed_batch(["MKVLAAG", "MKW"], per_residue=True)
    assert [r.shape[0] for r in res] == [7, 3]
    torch.testing.assert_close(res[1].mean(0), e[1], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    m = _tiny(teachers={"tiny-random-esm2": 64, "b": 7})
    m.save(tmp_path / "st")
    assert is_student_dir(tmp_path / "st")
    meta = json.loads((tmp_path / "st" / "config.json").read_text())
    assert meta["format"] == "mtdp-student" and meta["config"]["teachers"]["b"] == 7
    m2 = load_student(tmp_path / "st")
    tok = ResidueTokenizer()
    ids, mask = tok.batch_encode(["MKVLAAGG", "MK"])
    with torch.inference_mode():
        a, b = m(ids, mask), m2(ids, mask)
        heads = m2.teacher_logits(a["embedding"])
    for k in ("embedding", "mlm_logits"):
        assert torch.equal(a[k], b[k])
    assert {k: v.shape[-1] for k, v in heads.items()} == {"tiny-random-esm2": 64, "b": 7}
    # one call from a path string, as the CLI does
    e = load_embedder(str(tmp_path / "st"), device="cpu")
    assert e.dim == 128 and e.name == "student"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an mtdp student directory"):
        load_student(tmp_path)
    with pytest.raises(ValueError, match="unknown student preset"):
        StudentConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown student config field"):
        StudentConfig.from_dict({"d_modle": 3})


def test_shipped_student_is_named_after_itself(tmp_path):
    """``mtdp-unirep`` writes its own name into embedding metadata (a predictor's wrong-model
    check tells it from another student); a copy elsewhere is a plain "student"."""
    import shutil

    from mtdp.pretrained import shipped_path

    e = load_embedder("mtdp-unirep", device="cpu")
    assert e.name == e.describe()["name"] == "mtdp-unirep"
    copy = shutil.copytree(shipped_path("mtdp-unirep"), tmp_path / "mtdp-unirep")
    assert load_embedder(str(copy), device="cpu").name == "student"
