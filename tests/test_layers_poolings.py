"""Teachers' layers and poolings (esm-extract's --repr_layers / --include choices): each
changes the vector as it says, the default stays the last layer's mean, and the store keeps
every choice apart."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdp.cli import main
from mtdp.embed import embed_sequences
from mtdp.models.registry import load_embedder
from mtdp.outputs import read_embeddings
from mtdp.sequences import write_fasta
from mtdp.store import EmbeddingStore

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]


def test_esm2_layer_and_poolings_are_what_they_say() -> None:
    base = load_embedder("tiny-random-esm2", device="cpu")
    default = embed_sequences(base, SEQS)
    last = embed_sequences(load_embedder("tiny-random-esm2", device="cpu", repr_layer=-1), SEQS)
    np.testing.assert_array_equal(default, last)  # -1 is the default, the same vectors
    first = load_embedder("tiny-random-esm2", device="cpu", repr_layer=0)
    assert first.repr_layer == 0
    x0 = embed_sequences(first, SEQS)
    assert not np.allclose(x0, default)
    with torch.no_grad():  # the embedding layer's mean, computed by hand
        _, _, toks = base.batch_converter([("a", SEQS[0])])
        rep = base.model(toks, repr_layers=[0])["representations"][0][0, 1:len(SEQS[0]) + 1]
    np.testing.assert_allclose(x0[0], rep.mean(0).numpy(), atol=1e-5)
    mx = embed_sequences(load_embedder("tiny-random-esm2", device="cpu", pooling="max"), SEQS)
    _, res = embed_sequences(base, SEQS, per_residue=True)
    for i in range(len(SEQS)):
        np.testing.assert_allclose(mx[i], np.asarray(res[i]).max(0), atol=1e-5)
    bos = embed_sequences(load_embedder("tiny-random-esm2", device="cpu", pooling="bos"), SEQS)
    assert not np.allclose(bos, default) and not np.allclose(bos, mx)
    both = load_embedder("tiny-random-esm2", device="cpu", pooling="mean+max")
    assert both.dim == 2 * base.dim
    np.testing.assert_allclose(embed_sequences(both, SEQS), np.concatenate([default, mx], 1),
                               atol=1e-5)


def test_t5_layers_and_refusals() -> None:
    x = embed_sequences(load_embedder("tiny-random-t5", device="cpu"), SEQS)
    x1 = embed_sequences(load_embedder("tiny-random-t5", device="cpu", repr_layer=1), SEQS)
    assert not np.allclose(x, x1)
    with pytest.raises(ValueError, match="needs a BOS token"):
        load_embedder("tiny-random-t5", device="cpu", pooling="bos")
    with pytest.raises(ValueError, match="this model has layers 0.."):
        load_embedder("tiny-random-t5", device="cpu", repr_layer=99)
    with pytest.raises(ValueError, match="not to aac"):
        load_embedder("aac", pooling="max")


def test_store_keeps_layers_and_poolings_apart(tmp_path, capsys) -> None:
    write_fasta([(f"p{i}", s) for i, s in enumerate(SEQS)], tmp_path / "in.fasta")
    store = tmp_path / "store"
    outs = {}
    for name, extra in (("default", []), ("layer0", ["--repr_layers", "0"]),
                        ("max", ["--pooling", "max"]), ("last", ["--repr-layers", "-1"])):
        assert main(["embed", str(tmp_path / "in.fasta"), "-o", str(tmp_path / f"{name}.parquet"),
                     "--model", "tiny-random-esm2", "--device", "cpu", "--quiet", "--store",
                     str(store), *extra]) == 0
        outs[name] = read_embeddings(tmp_path / f"{name}.parquet")[1]
    capsys.readouterr()
    assert len(EmbeddingStore(store).models()) == 3  # default and -1 share one table
    np.testing.assert_array_equal(outs["last"], outs["default"])
    assert not np.allclose(outs["layer0"], outs["default"])
    assert not np.allclose(outs["max"], outs["default"])
    # Several layers: one pass, their vectors concatenated in the order given, a table of
    # their own; the pieces are the single-layer vectors.
    assert main(["embed", str(tmp_path / "in.fasta"), "-o", str(tmp_path / "two.parquet"),
                 "--model", "tiny-random-esm2", "--device", "cpu", "--quiet", "--store",
                 str(store), "--repr-layers", "0", "-1"]) == 0
    two = read_embeddings(tmp_path / "two.parquet")[1]
    d = outs["default"].shape[1]
    assert two.shape[1] == 2 * d and len(EmbeddingStore(store).models()) == 4
    np.testing.assert_allclose(two[:, :d], outs["layer0"], atol=1e-5)
    np.testing.assert_allclose(two[:, d:], outs["default"], atol=1e-5)
    assert main(["embed", str(tmp_path / "in.fasta"), "-o", str(tmp_path / "x.parquet"),
                 "--model", "tiny-random-esm2", "--repr-layers", "0", "-3"]) == 2
    assert "a layer is given twice" in capsys.readouterr().err


def test_t5_several_layers_per_residue() -> None:
    """ProtT5-layout teachers concatenate per residue too (the last layer included)."""
    one = load_embedder("tiny-random-t5", device="cpu", repr_layer=1)
    both = load_embedder("tiny-random-t5", device="cpu", repr_layer=[1, -1])
    last = load_embedder("tiny-random-t5", device="cpu")
    assert both.dim == 2 * last.dim and both.repr_layer == (1, last.num_layers)
    e1, r1 = embed_sequences(one, SEQS, per_residue=True)
    eb, rb = embed_sequences(both, SEQS, per_residue=True)
    el, rl = embed_sequences(last, SEQS, per_residue=True)
    np.testing.assert_allclose(eb, np.concatenate([e1, el], 1), atol=1e-5)
    for i, s in enumerate(SEQS):
        assert np.asarray(rb[i]).shape == (len(s), 2 * last.dim)
        np.testing.assert_allclose(np.asarray(rb[i]), np.concatenate(
            [np.asarray(r1[i]), np.asarray(rl[i])], 1), atol=1e-5)
