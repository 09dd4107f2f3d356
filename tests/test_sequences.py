"""FASTA reading, validation, cleaning, truncation and every error path."""
from __future__ import annotations

import gzip
import io

import pytest

from mtdp.sequences import (Record, SequenceError, clean, iter_fasta, prepare, prepare_records,
                            read_fasta, write_fasta)


def _write(tmp_path, text: str, name: str = "x.fasta"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_multiline_records_and_headers(tmp_path):
    p = _write(tmp_path, ">sp|P1|A desc with  spaces\nMKV\nLLA\n\n; comment\n>P2\nAC DE*\n")
    recs = read_fasta(p)
    assert [r.id for r in recs] == ["sp|P1|A", "P2"]
    assert recs[0].description == "desc with  spaces"
    assert recs[0].sequence == "MKVLLA"
    assert recs[1].sequence == "ACDE"  # inner whitespace and trailing stop removed
    assert [r.index for r in recs] == [1, 2]


def test_gzip_is_detected_by_content(tmp_path):
    p = tmp_path / "x.fa.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(">a\nMKV\n>b\nAAA\n")
    assert [(r.id, r.sequence) for r in read_fasta(p)] == [("a", "MKV"), ("b", "AAA")]


def test_truncated_gzip_is_a_clear_error(tmp_path):
    p = tmp_path / "x.fa.gz"
    data = gzip.compress((">a\nMKV\n" * 5000).encode())
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SequenceError, match="corrupt or truncated") as ei:
        read_fasta(p)
    assert str(p) in str(ei.value)


def test_not_fasta_and_missing_file(tmp_path):
    with pytest.raises(SequenceError, match="before any '>' header"):
        read_fasta(_write(tmp_path, "MKV\n>a\nAAA\n"))
    with pytest.raises(SequenceError, match="no such file"):
        read_fasta(tmp_path / "nope.fasta")
    with pytest.raises(SequenceError, match="empty header"):
        read_fasta(_write(tmp_path, ">\nAAA\n", "h.fasta"))
    bad = tmp_path / "bin.fasta"
    bad.write_bytes(b">a\n\xff\xfe\n")
    with pytest.raises(SequenceError, match="not a text FASTA"):
        read_fasta(bad)


def test_clean_prottrans_convention():
    assert clean("mkuZOBx") == "MKXXXXX"


def test_validation_errors_name_file_record_and_position(tmp_path):
    p = _write(tmp_path, ">ok\nMKV\n>bad stuff\nMK1V\n")
    with pytest.raises(SequenceError) as ei:
        list(prepare_records(iter_fasta(p)))
    msg = str(ei.value)
    assert str(p) in msg and "record 2" in msg and "'bad'" in msg and "position 3" in msg
    assert "'1'" in msg


def test_empty_and_huge_sequences():
    with pytest.raises(SequenceError, match="empty sequence"):
        prepare("", seq_id="e")
    with pytest.raises(SequenceError, match="exceeds the limit"):
        prepare("A" * 200_001, seq_id="h")


def test_empty_record_in_file(tmp_path):
    p = _write(tmp_path, ">a\nMKV\n>empty\n>c\nAAA\n")
    with pytest.raises(SequenceError, match="record 2, id 'empty': empty sequence"):
        list(prepare_records(iter_fasta(p)))
    rejects: list[SequenceError] = []
    out = list(prepare_records(iter_fasta(p), on_invalid="skip", rejects=rejects))
    assert [r.id for r in out] == ["a", "c"]
    assert [e.seq_id for e in rejects] == ["empty"]


def test_duplicate_ids(tmp_path):
    p = _write(tmp_path, ">a\nMKV\n>b\nAAA\n>a\nGGG\n")
    with pytest.raises(SequenceError, match="duplicate id.*first seen at record 1"):
        list(prepare_records(iter_fasta(p)))
    rejects: list[SequenceError] = []
    out = list(prepare_records(iter_fasta(p), on_duplicate="keep-first", rejects=rejects))
    assert [(r.id, r.sequence) for r in out] == [("a", "MKV"), ("b", "AAA")]
    assert rejects[0].record == 3


def test_truncation_default_and_configurable():
    assert len(prepare("A" * 1500)) == 1000
    assert prepare("MKVLA", max_len=3) == "MKV"
    assert len(prepare("A" * 1500, max_len=None)) == 1500


def test_write_read_round_trip(tmp_path):
    recs = [Record("a", "M" * 130, "first"), Record("b", "KV")]
    for name in ("r.fasta", "r.fasta.gz"):
        write_fasta(recs, tmp_path / name)
        back = read_fasta(tmp_path / name)
        assert [(r.id, r.sequence, r.description) for r in back] == \
            [("a", "M" * 130, "first"), ("b", "KV", "")]


def test_text_stream_input():
    recs = read_fasta(io.StringIO(">x y\nMK\n"), name="<body>")
    assert recs[0].source == "<body>" and recs[0].sequence == "MK"


def test_real_file_reads_cleanly(real_fasta):
    recs = list(prepare_records(iter_fasta(real_fasta)))
    assert len(recs) == 2768
    assert all(0 < len(r.sequence) <= 1000 for r in recs)
