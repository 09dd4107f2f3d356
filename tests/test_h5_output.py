"""``mtdp embed -o X.h5`` and ``--dtype float16``: the ProtTrans / bio_embeddings HDF5 layout
read the way goPredSim and ProtSpace read it (a dataset per protein, the FASTA id in
``attrs["original_id"]``, ``model_name`` at the root), ids that collide once cleaned, and
float16 files that round-trip to the float32 ones."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mtdp.cli import main
from mtdp.outputs import h5_mapping_path, h5_residues_path, read_embeddings

IDS = ["sp|P1|A/B", "sp|P1|A_B", ".hidden", "plain", "x,y\"z"]


@pytest.fixture
def fasta(tmp_path):
    rng = np.random.default_rng(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    path = tmp_path / "in.fasta"
    path.write_text("".join(f">{i} some description\n{''.join(rng.choice(list(aa), 30 + 7 * k))}\n"
                            for k, i in enumerate(IDS)))
    return path


def _embed(fasta, out, *extra, capsys=None):
    assert main(["embed", str(fasta), "-o", str(out), "--model", "tiny-random-esm2",
                 "--device", "cpu", "--quiet", *extra]) == 0


def test_h5_layout_as_gopredsim_and_protspace_read_it(fasta, tmp_path) -> None:
    import h5py

    _embed(fasta, tmp_path / "ref.parquet", "--per-residue")
    ref_ids, ref = read_embeddings(tmp_path / "ref.parquet")
    import pyarrow.parquet as pq

    ref_res = pq.read_table(tmp_path / "ref.parquet").column("per_residue").to_pylist()
    out = tmp_path / "emb.h5"
    _embed(fasta, out, "--per-residue")
    first_words = [i.split()[0] for i in IDS]
    assert ref_ids == first_words
    with h5py.File(out, "r") as f:
        assert f.attrs["model_name"] == "tiny-random-esm2"      # ProtSpace's root attribute
        assert f.attrs["level"] == "per-protein" and f.attrs["dtype"] == "float32"
        keys = list(f.keys())
        assert len(keys) == len(IDS) and "/" not in "".join(keys)
        # goPredSim's reader (file_utils.read_embeddings): every item, attrs['original_id']
        by_id = {f[k].attrs["original_id"]: np.array(v) for k, v in f.items()}
    assert sorted(by_id) == sorted(first_words)
    for i, pid in enumerate(ref_ids):
        np.testing.assert_allclose(by_id[pid], ref[i], rtol=0, atol=0)
    with h5py.File(h5_residues_path(out), "r") as f:
        res = {f[k].attrs["original_id"]: f[k][()] for k in f}
    for i, pid in enumerate(ref_ids):
        assert res[pid].shape == (len(ref_res[i]), ref.shape[1])
        np.testing.assert_allclose(res[pid], np.asarray(ref_res[i]), rtol=0, atol=1e-6)
    ids, emb = read_embeddings(out)  # in input order, through the mapping file
    assert ids == ref_ids
    np.testing.assert_array_equal(emb, ref)
    assert h5_mapping_path(out).read_text().splitlines()[0] == ",original_id,sequence_length"


@pytest.mark.parametrize("suffix", ["parquet", "npy", "h5"])
def test_float16_files_round_trip_and_are_smaller(fasta, tmp_path, suffix) -> None:
    full, half = tmp_path / f"a.{suffix}", tmp_path / f"b.{suffix}"
    _embed(fasta, full)
    _embed(fasta, half, "--dtype", "float16")
    ids32, e32 = read_embeddings(full)
    ids16, e16 = read_embeddings(half)
    assert ids16 == ids32 and e16.dtype == np.float32
    assert not np.array_equal(e16, e32)  # really stored as float16
    np.testing.assert_allclose(e16, e32.astype(np.float16).astype(np.float32), rtol=0, atol=0)
    if suffix == "npy":
        assert np.load(half).dtype == np.float16
        assert json.loads(half.with_suffix(".meta.json").read_text())["dtype"] == "float16"


def test_per_residue_npy_is_refused_before_any_work(fasta, tmp_path, capsys) -> None:
    assert main(["embed", str(fasta), "-o", str(tmp_path / "x.npy"), "--model",
                 "tiny-random-esm2", "--per-residue", "--quiet"]) == 2
    assert "Parquet (.parquet) or HDF5" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_esm_extract_flag_spellings_are_accepted(fasta, tmp_path) -> None:
    """A user's esm-extract flags run: --toks_per_batch, --truncation_seq_length, --include."""
    import h5py

    out = tmp_path / "x.h5"
    _embed(fasta, out, "--toks_per_batch", "512", "--truncation_seq_length", "40",
           "--include", "mean", "per_tok")
    with h5py.File(out, "r") as f:
        assert f.attrs["max_len"] == "40"
    with h5py.File(h5_residues_path(out), "r") as f:
        assert max(f[k].shape[0] for k in f) == 40


def _protspace_read(path):
    """What ProtSpace's HDF5 loader does (tsenoner/protspace,
    apps/protspace/src/protspace/data/loaders/h5.py: ``_collect_datasets``, ``load_h5``,
    ``_resolve_model_name``): datasets at the root or one group down, each a 1-D vector (or
    ``(1, d)``; anything else is refused as per-residue), the name from the root ``model_name``
    attribute (an error without it), the dataset key as the protein's header."""
    import h5py

    with h5py.File(path, "r") as f:
        pairs = [(k, v) for k, v in f.items() if not isinstance(v, h5py.Group)]
        pairs += [(s, w) for v in f.values() if isinstance(v, h5py.Group)
                  for s, w in v.items() if not isinstance(w, h5py.Group)]
        vecs = {}
        for key, ds in pairs:
            emb = np.array(ds)
            if emb.ndim == 2 and emb.shape[0] == 1:
                emb = emb[0]
            assert emb.ndim == 1, f"{key}: {emb.shape} would be refused as per-residue"
            vecs[key] = emb.astype(np.float32)
        name = f.attrs.get("model_name")
    assert name is not None, "ProtSpace refuses a file without a root model_name"
    return str(name), vecs


def test_protspace_reads_the_per_protein_file(fasta, tmp_path) -> None:
    out = tmp_path / "emb.h5"
    _embed(fasta, out, "--per-residue", "--dtype", "float16")
    name, vecs = _protspace_read(out)  # the per-residue file beside it is not in its way
    ids, emb = read_embeddings(out)
    assert name == "tiny-random-esm2" and len(vecs) == len(IDS)
    import h5py

    with h5py.File(out, "r") as f:
        key_of = {f[k].attrs["original_id"]: k for k in f}
    for i, pid in enumerate(ids):
        np.testing.assert_array_equal(vecs[key_of[pid]], emb[i])
