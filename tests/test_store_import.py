"""``mtdp store import``: vectors computed elsewhere become a named external model, keyed by
sequence, that search and annotate use; mismatches are named."""
from __future__ import annotations

import json

import h5py
import numpy as np

from mtdp.cli import main
from mtdp.sequences import write_fasta

rng = np.random.default_rng(0)
AA = list("ACDEFGHIKLMNPQRSTVWY")
SEQS = {f"P{i:03d}": "".join(rng.choice(AA, 40 + i)) for i in range(30)}


def _uniprot_style_h5(path, vectors):
    """As UniProt publishes per-protein embeddings: one 1-d dataset per accession."""
    with h5py.File(path, "w") as f:
        for pid, v in vectors.items():
            f.create_dataset(pid, data=v.astype(np.float16))
    return path


def test_import_then_search_and_annotate(tmp_path, capsys) -> None:
    vec = {pid: rng.normal(size=12) for pid in SEQS}
    vec["P001"] = vec["P000"] + 0.01  # P000's nearest other protein
    h5 = _uniprot_style_h5(tmp_path / "per-protein.h5", vec)
    write_fasta(list(SEQS.items()), tmp_path / "all.fasta")
    store = tmp_path / "store"
    assert main(["store", "import", str(store), str(h5), "--fasta", str(tmp_path / "all.fasta"),
                 "--name", "prott5-uniprot", "--run", "sp"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["proteins"], out["added"], out["dim"]) == (30, 30, 12)
    write_fasta([("q", SEQS["P000"])], tmp_path / "q.fasta")
    assert main(["search", str(tmp_path / "q.fasta"), "--store", str(store), "--model",
                 "prott5-uniprot", "-k", "2", "-o", str(tmp_path / "hits.tsv")]) == 0
    rows = [r.split("\t") for r in (tmp_path / "hits.tsv").read_text().splitlines()[1:]]
    assert [r[2] for r in rows] == ["P000", "P001"]
    ref = tmp_path / "ref.tsv"
    ref.write_text("id\tsequence\tlocation\n" + "".join(
        f"{p}\t{s}\t{'Nucleus' if p in ('P001', 'P002') else 'Cytoplasm'}\n"
        for p, s in SEQS.items() if p != "P000"))
    assert main(["annotate", str(tmp_path / "q.fasta"), "--reference", str(ref), "--store",
                 str(store), "--model", "prott5-uniprot", "-o", str(tmp_path / "a.tsv")]) == 0
    ann = (tmp_path / "a.tsv").read_text().splitlines()[1].split("\t")
    assert ann[:2] == ["q", "Nucleus"] and ann[4] == "P001"


def test_import_names_what_does_not_fit(tmp_path, capsys) -> None:
    vec = {pid: rng.normal(size=8) for pid in SEQS}
    h5 = _uniprot_style_h5(tmp_path / "e.h5", vec)
    write_fasta(list(SEQS.items())[:-1], tmp_path / "short.fasta")
    store = tmp_path / "store"
    base = ["store", "import", str(store), str(h5), "--name", "ext", "--run", "r"]
    assert main([*base, "--fasta", str(tmp_path / "short.fasta")]) == 2
    assert "1 id(s) of" in capsys.readouterr().err  # P029 has no sequence
    write_fasta(list(SEQS.items()), tmp_path / "all.fasta")
    assert main([*base, "--fasta", str(tmp_path / "all.fasta")]) == 0
    capsys.readouterr()
    wide = _uniprot_style_h5(tmp_path / "w.h5", {p: rng.normal(size=16) for p in SEQS})
    assert main(["store", "import", str(store), str(wide), "--name", "ext", "--run", "r2",
                 "--fasta", str(tmp_path / "all.fasta")]) == 2
    assert "8-d vectors" in capsys.readouterr().err
    write_fasta([("new", "MKVLAAGG" * 5)], tmp_path / "new.fasta")
    assert main(["search", str(tmp_path / "new.fasta"), "--store", str(store), "--model", "ext",
                 "-o", str(tmp_path / "h.tsv")]) == 2
    assert "cannot embed new sequences" in capsys.readouterr().err
