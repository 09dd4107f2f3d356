"""The released MTDP model without the real file: a random-weight module with exactly the
release's key names and shapes (the repository's ``MTDP`` class, rebuilt here), saved as a
``.bin``; mtdp's output checked against a from-scratch reference forward (T5EncoderModel +
Linear, 1,001-token padding, pads in the mean) and the masked pooling against the mean over
real residues; bad files refused by name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mtdp.cli import main
from mtdp.embed import embed_sequences
from mtdp.outputs import read_embeddings
from mtdp.sequences import write_fasta

RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"


class MTDP(nn.Module):
    """KennthShang/MTDP embedder.py's module: same attribute names, same configuration."""

    def __init__(self, vocab_size: int = 128) -> None:
        super().__init__()
        from transformers import T5Config, T5EncoderModel

        cfg = T5Config(vocab_size=vocab_size, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                       num_decoder_layers=6, num_heads=8, feed_forward_proj="relu",
                       dense_act_fn="relu", is_gated_act=False, layer_norm_epsilon=1e-6,
                       relative_attention_num_buckets=32, relative_attention_max_distance=128,
                       dropout_rate=0.1, pad_token_id=0, eos_token_id=1,
                       is_encoder_decoder=True)
        self.T5Encoder = T5EncoderModel(cfg)
        self.embed = nn.Linear(512, 1280)


def reference_embed(model: MTDP, sequences: list[str], masked: bool = False) -> np.ndarray:
    """get_embedding.py's computation: U Z O B → X, first 1,000 residues, ProtT5 ids + </s>,
    padded to 1,001 tokens, embed(mean over all 1,001 positions). ``masked``: no padding,
    mean over the residues only."""
    out = []
    model.eval()
    with torch.no_grad():
        for s in sequences:
            s = s[:1000].translate(str.maketrans("UZOB", "XXXX"))
            ids = [3 + RESIDUES.index(c) for c in s] + [1]
            n = len(ids)
            if not masked:
                ids += [0] * (1001 - n)
            x = torch.tensor([ids])
            mask = (x != 0).long()
            h = model.T5Encoder(input_ids=x, attention_mask=mask).last_hidden_state
            pooled = h[:, :n - 1].mean(1) if masked else h.mean(1)
            out.append(model.embed(pooled)[0].numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, MTDP]:
    torch.manual_seed(0)
    model = MTDP().eval()
    path = tmp_path_factory.mktemp("mtdp-paper") / "UniProtKB.bin"
    torch.save(model.state_dict(), path)
    return path, model


def test_reference_and_masked_pooling_match_a_from_scratch_forward(release, tmp_path,
                                                                   capsys) -> None:
    path, model = release
    rng = np.random.default_rng(0)
    aa = list("ACDEFGHIKLMNPQRSTVWY")
    seqs = ["MKTAYIAKQRQISFVKSHFSRQUZ", "".join(rng.choice(aa, 1100)),
            "".join(rng.choice(aa, 230))]
    write_fasta([(f"p{i}", s) for i, s in enumerate(seqs)], tmp_path / "q.fasta")
    out = tmp_path / "ref.parquet"
    assert main(["embed", str(tmp_path / "q.fasta"), "-o", str(out), "--model",
                 f"mtdp-paper:{path}", "--device", "cpu", "--quiet"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (line["dim"], line["truncated"], line["max_len"]) == (1280, 1, 1000)
    ids, got = read_embeddings(out)
    want = reference_embed(model, seqs)
    assert ids == ["p0", "p1", "p2"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    masked = tmp_path / "masked.parquet"
    assert main(["embed", str(tmp_path / "q.fasta"), "-o", str(masked), "--model",
                 f"mtdp-paper:{path}", "--device", "cpu", "--quiet", "--pooling",
                 "masked"]) == 0
    _, got_m = read_embeddings(masked)
    np.testing.assert_allclose(got_m, reference_embed(model, seqs, masked=True), rtol=0,
                               atol=1e-5)
    assert np.abs(got_m - got).max() > 1e-3  # the two poolings really differ
    # The converted student directory gives the same vectors and says how it pools.
    sdir = tmp_path / "student"
    assert main(["student", "import-mtdp", str(path), "-o", str(sdir)]) == 0
    assert main(["student", "info", str(sdir)]) == 0
    text = capsys.readouterr().out
    info = json.loads(text[text.index("{\n"):])
    assert info["config"]["pooling"] == "reference"
    assert info["config"]["metadata"]["imported_from"] == "mtdp-paper"
    again = tmp_path / "student.parquet"
    assert main(["embed", str(tmp_path / "q.fasta"), "-o", str(again), "--model", str(sdir),
                 "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_allclose(read_embeddings(again)[1], got, rtol=0, atol=1e-6)
    from mtdp.models.registry import load_embedder

    assert load_embedder(str(sdir), device="cpu").describe()["pooling"] == "reference"
    assert main(["student", "import-mtdp", str(path), "-o", str(sdir)]) == 2  # not empty


def test_bad_release_files_are_refused_by_name(release, tmp_path, capsys) -> None:
    path, model = release
    write_fasta([("p", "MKTAYIAK")], tmp_path / "q.fasta")
    sd = model.state_dict()

    def refused(bad: Path, *words: str) -> None:
        for cmd in (["embed", str(tmp_path / "q.fasta"), "-o", str(tmp_path / "o.parquet"),
                     "--model", f"mtdp-paper:{bad}", "--quiet"],
                    ["student", "import-mtdp", str(bad), "-o", str(tmp_path / "s")]):
            assert main(cmd) == 2
            err = capsys.readouterr().err
            assert all(w in err for w in words), err
            assert "Traceback" not in err
        assert not (tmp_path / "s").exists() and not (tmp_path / "o.parquet").exists()

    extra = tmp_path / "extra.bin"
    torch.save({**sd, "classifier.weight": torch.zeros(2, 2)}, extra)
    refused(extra, "1 unexpected key(s)", "classifier.weight")
    missing = tmp_path / "missing.bin"
    torch.save({k: v for k, v in sd.items() if k != "embed.bias"}, missing)
    refused(missing, "1 key(s) missing", "embed.bias")
    vocab = tmp_path / "vocab.bin"
    torch.save({**sd, "T5Encoder.shared.weight": torch.zeros(130, 512),
                "T5Encoder.encoder.embed_tokens.weight": torch.zeros(130, 512)}, vocab)
    refused(vocab, "vocabulary size 130, expected 128")
    cut = tmp_path / "truncated.bin"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(cut, "truncated or corrupt")
    refused(tmp_path / "absent.bin", "no such file")


@pytest.mark.parametrize("pooling", ["masked", "reference"])
def test_export_hf_card_code_reproduces_mtdp_embed(tmp_path, pooling) -> None:
    """The model card's own code, run on the exported folder with transformers alone, gives
    the vectors `mtdp embed` gives."""
    import re

    from mtdp.models.registry import load_embedder
    from mtdp.models.student import StudentConfig, StudentModel

    torch.manual_seed(1)
    sdir = tmp_path / "tiny"
    StudentModel(StudentConfig.preset("tiny", max_len=60, pooling=pooling)).save(sdir)
    out = tmp_path / "hf"
    assert main(["student", "export-hf", str(sdir), "-o", str(out)]) == 0
    card = (out / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    code = re.sub(r'^d = ".*"$', f'd = "{out}"', code, flags=re.M)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the card's snippet, as a user would paste it
    want = embed_sequences(load_embedder(str(sdir), device="cpu"), ["MKTAYIAKQRQISFVKSHFSRQ"])[0]
    np.testing.assert_allclose(scope["emb"].numpy(), want, rtol=0, atol=1e-5)
    assert json.loads((out / "mtdp_pooling.json").read_text())["pooling"] == pooling
    assert main(["student", "export-hf", str(sdir), "-o", str(out)]) == 2  # not empty
