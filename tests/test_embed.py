"""Embedding engine and the `mtdp embed` CLI, end to end on real sequences."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mtdp.cli import main
from mtdp.embed import embed_file, embed_sequences, token_budget_batches
from mtdp.outputs import read_embeddings
from mtdp.models.registry import load_embedder
from mtdp.models.student import StudentEmbedder
from mtdp.sequences import iter_fasta, prepare_records, write_fasta
from mtdp.models.student import StudentConfig, StudentModel, load_student


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("student") / "tiny"
    StudentModel(StudentConfig.preset("tiny")).save(d)
    return d


@pytest.fixture(scope="module")
def sample_fasta(real_fasta, tmp_path_factory):
    """300 real DeepLoc proteins (lengths 40..1000+), in file order."""
    recs = [r for _, r in zip(range(300), iter_fasta(real_fasta))]
    p = tmp_path_factory.mktemp("fa") / "sample.fasta"
    write_fasta(recs, p)
    return p


def test_token_budget_batches_cover_all_once_and_respect_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1200, size=500).tolist()
    batches = token_budget_batches(lengths, max_tokens=4000)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        width = max(lengths[i] for i in b) + 2
        assert width * len(b) <= 4000 or len(b) == 1
    # length-sorted: batch widths never increase
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)


def test_cli_embed_parquet_matches_input_order_and_single_sequence(student_dir, sample_fasta,
                                                                    tmp_path):
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(sample_fasta), "-o", str(out), "--model", str(student_dir),
                 "--quiet", "--device", "cpu"]) == 0
    ids, emb = read_embeddings(out)
    expected = list(prepare_records(iter_fasta(sample_fasta)))
    assert ids == [r.id for r in expected]
    assert emb.shape == (300, 128)
    table = pq.read_table(out)
    assert table.column("length").to_pylist() == [len(r.sequence) for r in expected]
    assert max(table.column("length").to_pylist()) == 1000  # truncated to the default
    meta = table.schema.metadata
    assert meta[b"model"] == b"student" and meta[b"max_len"] == b"1000"
    assert not (tmp_path / "emb.parquet.partial").exists()
    # one at a time == batched (masking and pooling leak nothing from padding)
    model = StudentEmbedder(load_student(student_dir))
    for k in range(0, 300, 37):
        single = embed_sequences(model, [expected[k].sequence])[0]
        np.testing.assert_allclose(emb[k], single, atol=1e-5, rtol=0)


def test_npy_output_and_small_chunks_agree(student_dir, real_fasta, tmp_path):
    fa = tmp_path / "small.fasta.gz"
    write_fasta([r for _, r in zip(range(120), iter_fasta(real_fasta))], fa)
    model = load_embedder(str(student_dir), device="cpu")
    a = embed_file(model, fa, tmp_path / "a.npy", chunk_size=32, max_len=400, progress=False)
    b = embed_file(model, fa, tmp_path / "b.parquet", chunk_size=1000, max_len=400,
                   batch_tokens=2048, progress=False)
    assert a.proteins == b.proteins == 120
    ids_a, ea = read_embeddings(tmp_path / "a.npy")
    ids_b, eb = read_embeddings(tmp_path / "b.parquet")
    assert ids_a == ids_b
    np.testing.assert_allclose(ea, eb, atol=1e-5)


def test_per_residue_parquet(tmp_path):
    fa = tmp_path / "x.fasta"
    write_fasta([("a", "MKVLA"), ("b", "MK")], fa)
    teacher = load_embedder("tiny-random-esm2", device="cpu")
    embed_file(teacher, fa, tmp_path / "r.parquet", per_residue=True, progress=False)
    t = pq.read_table(tmp_path / "r.parquet")
    res = t.column("per_residue").to_pylist()
    assert [len(r) for r in res] == [5, 2]
    np.testing.assert_allclose(np.mean(res[0], axis=0), t.column("embedding")[0].as_py(),
                               atol=1e-5)
    with pytest.raises(ValueError, match="Parquet"):
        embed_file(teacher, fa, tmp_path / "r.npy", per_residue=True, progress=False)


def test_cli_errors_are_clear_and_nothing_half_written(tmp_path, capsys):
    fa = tmp_path / "bad.fasta"
    fa.write_text(">ok\nMKV\n>bad\nMK7V\n>ok\nAAA\n")
    out = tmp_path / "o.parquet"
    assert main(["embed", str(fa), "-o", str(out), "-m", "tiny-random-t5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "record 2" in err and "'bad'" in err and "position 3" in err
    assert not out.exists()
    # skipping: the bad record and the duplicate are listed, the rest embedded
    assert main(["embed", str(fa), "-o", str(out), "-m", "tiny-random-t5", "--quiet",
                 "--skip-invalid", "--keep-first-duplicate"]) == 0
    assert read_embeddings(out)[0] == ["ok"]
    rejects = (tmp_path / "o.parquet.rejects.tsv").read_text().splitlines()
    assert len(rejects) == 3 and "duplicate" in rejects[2] and "invalid character" in rejects[1]
    assert main(["embed", str(fa), "-o", str(tmp_path / "o.txt"), "-m", "tiny-random-t5"]) == 2
    assert "cannot tell the output format" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "mtdp.cli", "embed", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--model" in out and "--per-residue" in out and "examples" in out
