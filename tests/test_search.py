"""Search and annotation transfer over the embedding store: exact kNN and label transfer
against hand-computed examples, `mtdp index` / `mtdp search` (a stored protein finds itself at
rank 1, a one-substitution copy finds its source in the top 3, with and without the index),
refusals (another model's store, unknown runs, invalid queries) and `mtdp annotate` on the
shared GO and DeepLoc data."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from mtdp.cli import main
import mtdp.search.transfer as tr
from mtdp.sequences import read_fasta, write_fasta

MODEL = "tiny-random-esm2"


def test_knn_matches_brute_force_across_blocks(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    ref, q = rng.normal(size=(53, 8)), rng.normal(size=(7, 8))
    monkeypatch.setattr(tr, "BLOCK", 10)  # several blocks: the running top-k must merge them
    for metric in ("cosine", "euclidean"):
        idx, dist = tr.knn(ref, q, 4, metric)
        if metric == "cosine":
            a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
            b = q / np.linalg.norm(q, axis=1, keepdims=True)
            full = 1 - b @ a.T
        else:
            full = np.linalg.norm(q[:, None] - ref[None], axis=2)
        want = np.argsort(full, axis=1)[:, :4]
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), atol=1e-5)
    assert tr.knn(ref[:2], q, 5)[0].shape == (7, 2)  # k capped at the reference size


def test_transfer_matches_hand_computed_scores() -> None:
    # Two neighbours at Euclidean distances 0.5 and 1.5: reliabilities 0.5 and 0.25.
    idx, dist = np.array([[0, 1]]), np.array([[0.5, 1.5]])
    terms = np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32)  # {A, B} and {B, C}
    np.testing.assert_allclose(tr.transfer(idx, dist, terms, "multilabel", "euclidean"),
                               [[0.25, 0.375, 0.125]])  # sum of reliabilities / k
    votes = tr.transfer(idx, dist, np.array([1, 0]), "multiclass", "euclidean", n_classes=3)
    np.testing.assert_allclose(votes, [[1 / 3, 2 / 3, 0]], atol=1e-6)  # 0.25 : 0.5
    mean = tr.transfer(idx, dist, np.array([10.0, 40.0]), "regression", "euclidean")
    np.testing.assert_allclose(mean, [20.0], atol=1e-6)  # (0.5·10 + 0.25·40) / 0.75
    # Cosine: the reliability is the similarity, 1 - d, clipped to [0, 1].
    np.testing.assert_allclose(tr.similarity([0.0, 0.3, 1.4], "cosine"), [1.0, 0.7, 0.0])


@pytest.fixture(scope="module")
def built(tmp_path_factory, real_fasta: Path):
    """A store holding 300 real proteins (≤ 300 aa) embedded with a tiny random ESM-2 under run
    ``ref``, indexed (IVF-PQ, cosine)."""
    d = tmp_path_factory.mktemp("search")
    recs = [r for r in read_fasta(real_fasta) if 30 <= len(r.sequence) <= 300][:300]
    write_fasta(recs, d / "ref.fasta")
    store = d / "store"
    assert main(["embed", str(d / "ref.fasta"), "-o", str(d / "ref.parquet"), "--model", MODEL,
                 "--device", "cpu", "--quiet", "--store", str(store), "--run", "ref"]) == 0
    return d, store, recs


def _hits(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _mutant(seq: str, pos: int) -> str:
    new = "A" if seq[pos] != "A" else "G"
    return seq[:pos] + new + seq[pos + 1:]


def test_search_finds_itself_and_one_substitution_copies(built, capsys) -> None:
    d, store, recs = built
    picks = recs[::37][:8]
    queries = [(f"self-{r.id}", r.sequence) for r in picks]
    queries += [(f"mut-{r.id}", _mutant(r.sequence, len(r.sequence) // 2)) for r in picks]
    write_fasta(queries, d / "q.fasta")
    assert main(["index", "--store", str(store), "--model", MODEL]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (info["kind"], info["metric"], info["rows"]) == ("ivf_hnsw_sq", "cosine", 300)
    for extra in ([], ["--exact"], ["--metric", "euclidean"]):
        out = d / f"hits{len(extra)}{extra[-1:] }.tsv"
        assert main(["search", str(d / "q.fasta"), "--store", str(store), "--model", MODEL,
                     "-k", "5", "-o", str(out), *extra]) == 0
        line = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert line["search"] == ("ivf_hnsw_sq" if not extra else "exact"), line
        rows = _hits(out)
        assert len(rows) == 5 * len(queries)
        for r in picks:
            mine = [h for h in rows if h["query"] == f"self-{r.id}"]
            assert mine[0]["hit_id"] == r.id and float(mine[0]["distance"]) < 1e-4, mine[0]
            near = [h["hit_id"] for h in rows if h["query"] == f"mut-{r.id}"][:3]
            assert r.id in near, (r.id, near)
        dists = [float(h["distance"]) for h in rows if h["query"] == queries[0][0]]
        assert dists == sorted(dists)
    # The mutants are now stored (as queries, without an id): never reported as hits.
    assert not {h["hit_id"] for h in _hits(out)} & {q for q, _ in queries}
    assert main(["store", "info", str(store)]) == 0


def test_search_refuses_foreign_stores_and_follows_embed_rules(built, capsys) -> None:
    d, store, recs = built
    write_fasta([("good", recs[0].sequence), ("bad", "MKV1LL"), ("ok2", recs[1].sequence)],
                d / "bad.fasta")
    args = ["search", str(d / "bad.fasta"), "--store", str(store), "-o", str(d / "b.tsv")]
    assert main([*args, "--model", "aac", "--skip-invalid"]) == 2
    err = capsys.readouterr().err
    assert "holds no embeddings of aac" in err and MODEL in err
    assert main([*args, "--model", MODEL]) == 2
    err = capsys.readouterr().err
    assert "record 2" in err and "'bad'" in err and not (d / "b.tsv").exists()
    assert main([*args, "--model", MODEL, "--skip-invalid", "-k", "2"]) == 0
    assert [h["query"] for h in _hits(d / "b.tsv")] == ["good", "good", "ok2", "ok2"]
    assert "bad" in (d / "b.tsv.rejects.tsv").read_text()
    assert main([*args, "--model", MODEL, "--skip-invalid", "--runs", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["search", str(d / "missing.fasta"), "--store", str(store), "--model", MODEL,
                 "-o", str(d / "m.tsv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["index", "--store", str(d / "nowhere"), "--model", MODEL]) == 2


@pytest.fixture(scope="module")
def go_reference(data_dir: Path, tmp_path_factory) -> tuple[Path, list[dict]]:
    d = tmp_path_factory.mktemp("annotate")
    with gzip.open(data_dir / "go" / "go_mf_swissprot2014.csv.gz", "rt") as fh:
        rows = [r for _, r in zip(range(400), csv.DictReader(fh))]
    path = d / "go_ref.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["accession", "sequence", "go_mf"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("accession", "sequence", "go_mf")} for r in rows)
    return path, rows


def test_annotate_transfers_go_terms_and_classes(go_reference, tmp_path, capsys) -> None:
    path, rows = go_reference
    picks = rows[5:9]
    write_fasta([(f"q{i}", r["sequence"]) for i, r in enumerate(picks)], tmp_path / "q.fasta")
    out = tmp_path / "go.tsv"
    assert main(["annotate", str(tmp_path / "q.fasta"), "--reference", str(path), "--model",
                 "kmer2", "--store", str(tmp_path / "store"), "-o", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (line["kind"], line["references"], line["queries"]) == ("terms", 400, 4)
    got = _hits(out)
    for i, r in enumerate(picks):
        # k = 1 and the query is a reference: its own terms, each at reliability 1.
        mine = {g["label"]: float(g["score"]) for g in got if g["query"] == f"q{i}"}
        assert mine == {t: 1.0 for t in r["go_mf"].split(";")}
        assert {g["nearest_id"] for g in got if g["query"] == f"q{i}"} == {r["accession"]}
    # k = 3 of the same: scores ≤ 1, the query's own terms all present and ≥ 1/3.
    assert main(["annotate", str(tmp_path / "q.fasta"), "--reference", str(path), "--model",
                 "kmer2", "--store", str(tmp_path / "store"), "-o", str(out), "-k", "3"]) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["computed"] == 0  # references and queries all answered from the store
    got = _hits(out)
    assert all(0 < float(g["score"]) <= 1 for g in got)
    own = {g["label"]: float(g["score"]) for g in got if g["query"] == "q0"}
    assert all(own[t] >= 1 / 3 - 1e-4 for t in picks[0]["go_mf"].split(";"))
    # Classes: a localization column, weighted vote.
    cls = tmp_path / "loc.tsv"
    with open(cls, "w") as fh:
        fh.write("id\tsequence\tlocation\n")
        fh.writelines(f"{r['accession']}\t{r['sequence']}\t{'Nucleus' if k % 2 else 'Cytoplasm'}"
                      "\n" for k, r in enumerate(rows[:50]))
    assert main(["annotate", str(tmp_path / "q.fasta"), "--reference", str(cls), "--model",
                 "aac", "-o", str(tmp_path / "c.tsv")]) == 0
    votes = _hits(tmp_path / "c.tsv")
    assert [(v["query"], v["label"], v["score"]) for v in votes] == [
        (f"q{i}", "Nucleus" if (5 + i) % 2 else "Cytoplasm", "1.0000") for i in range(4)]


def test_annotate_threshold_mode_and_cafa_output(go_reference, tmp_path, capsys) -> None:
    """goPredSim's threshold mode: a query that is a reference keeps its terms at distance
    0, a query far from every reference gets none; CAFA output as the assessors read it."""
    path, rows = go_reference
    far = "W" * 60  # no reference is mostly tryptophan
    write_fasta([("own", rows[7]["sequence"]), ("far", far)], tmp_path / "q.fasta")
    base = ["annotate", str(tmp_path / "q.fasta"), "--reference", str(path), "--model",
            "kmer2", "-k", "3"]
    assert main([*base, "-o", str(tmp_path / "all.tsv")]) == 0
    capsys.readouterr()
    assert {g["query"] for g in _hits(tmp_path / "all.tsv")} == {"own", "far"}
    assert main([*base, "--max-distance", "0.05", "-o", str(tmp_path / "t.tsv")]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    got = _hits(tmp_path / "t.tsv")
    assert line["annotated_queries"] == 1 and {g["query"] for g in got} == {"own"}
    assert {g["label"] for g in got} >= set(rows[7]["go_mf"].split(";"))
    assert all(float(g["nearest_distance"]) <= 0.05 for g in got)
    assert main([*base, "--format", "cafa", "-o", str(tmp_path / "c.txt")]) == 0
    lines = (tmp_path / "c.txt").read_text().splitlines()
    assert lines[:2] == ["AUTHOR mtdp", "MODEL 1"] and lines[2].startswith("KEYWORDS ")
    assert lines[-1] == "END"
    for row in lines[3:-1]:
        target, term, score = row.split("\t")
        assert target in ("own", "far") and term.startswith("GO:")
        assert 0.01 <= float(score) <= 1.0 and len(score.split(".")[1]) == 2


OBO = """format-version: 1.2

[Term]
id: GO:0000001
name: a process
namespace: biological_process

[Term]
id: GO:0000002
namespace: molecular_function
is_a: GO:0000001 ! not a real edge

[Term]
id: GO:0000033
alt_id: GO:0000003
namespace: cellular_component

[Typedef]
id: part_of
namespace: external
"""


def test_annotate_splits_go_terms_by_ontology(go_reference, tmp_path, capsys) -> None:
    """``--go-terms``: goPredSim's one file per ontology (alt_ids resolved, terms the file
    does not list kept apart and said), from an OBO file or a table of GAF aspects."""
    path, rows = go_reference
    ref = tmp_path / "ref.csv"
    ref.write_text("id,sequence,labels\n"
                   f"A,{rows[0]['sequence']},GO:0000001;GO:0000002;GO:0000003;GO:0000009\n"
                   f"B,{rows[1]['sequence']},GO:0000002\n")
    write_fasta([("qa", rows[0]["sequence"])], tmp_path / "q.fasta")
    obo = tmp_path / "go.obo"
    obo.write_text(OBO)
    base = ["annotate", str(tmp_path / "q.fasta"), "--reference", str(ref), "--model", "aac"]
    assert main([*base, "--go-terms", str(obo), "-o", str(tmp_path / "p.tsv")]) == 0
    out = capsys.readouterr()
    files = json.loads(out.out.splitlines()[-1])["output"]
    assert sorted(files) == ["bpo", "cco", "mfo", "unknown"]
    got = {ont: [(g["query"], g["label"]) for g in _hits(files[ont])] for ont in files}
    assert got == {"bpo": [("qa", "GO:0000001")], "mfo": [("qa", "GO:0000002")],
                   "cco": [("qa", "GO:0000003")], "unknown": [("qa", "GO:0000009")]}
    assert files["mfo"] == str(tmp_path / "p_mfo.tsv") and "not in" in out.err
    table = tmp_path / "terms.tsv"
    table.write_text("term\taspect\nGO:0000001\tP\nGO:0000002\tF\nGO:0000003\tC\n"
                     "GO:0000009\tF\n")
    assert main([*base, "--go-terms", str(table), "--format", "cafa",
                 "-o", str(tmp_path / "c.txt")]) == 0
    files = json.loads(capsys.readouterr().out.splitlines()[-1])["output"]
    assert "unknown" not in files
    mfo = (tmp_path / "c_mfo.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in mfo[3:-1]) == ["GO:0000002", "GO:0000009"]
    broken = tmp_path / "broken.obo"
    broken.write_text("format-version: 1.2\n\n[Term]\nid: GO:1\nname: x\n\n[Term]\n"
                      "id: GO:2\nnamespace: molecular_function\n")
    assert main([*base, "--go-terms", str(broken), "-o", str(tmp_path / "b.tsv")]) == 2
    assert f"{broken}:3: term GO:1 has no namespace" in capsys.readouterr().err
    assert not (tmp_path / "b_mfo.tsv").exists()


def test_annotate_names_bad_references(go_reference, tmp_path, capsys) -> None:
    path, rows = go_reference
    write_fasta([("q", rows[0]["sequence"])], tmp_path / "q.fasta")
    base = ["annotate", str(tmp_path / "q.fasta"), "--model", "aac", "-o", str(tmp_path / "o")]
    bad = tmp_path / "nolabels.csv"
    bad.write_text("id,sequence\nA,MKV\n")
    assert main([*base, "--reference", str(bad)]) == 2
    assert "no labels column" in capsys.readouterr().err
    dup = tmp_path / "dup.csv"
    dup.write_text("id,sequence,labels\nA,MKV,x\nB,MKL,y\nA,MKK,z\n")
    assert main([*base, "--reference", str(dup)]) == 2
    err = capsys.readouterr().err
    assert "record 4" in err and "duplicate id (first at line 2)" in err
    inval = tmp_path / "inval.csv"
    inval.write_text("id,sequence,labels\nA,MKV,x\nB,MK*7L,y\n")
    assert main([*base, "--reference", str(inval)]) == 2
    assert "record 3" in capsys.readouterr().err
    assert main([*base, "--reference", str(inval), "--skip-invalid"]) == 0
    assert "1 reference row(s) skipped" in capsys.readouterr().err
    assert main([*base, "--reference", str(tmp_path / "q.fasta")]) == 2  # a FASTA, not a table


def test_besthit_transfer_on_a_hand_made_fold() -> None:
    from mtdp.evaluate.homology import besthit_fold

    y = np.array([[1, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float32)
    # Test protein 2's best hit is another test protein (3): its best training hit is 1, at
    # 50 % identity; protein 3 has no hit at all.
    hits = [[], [], [(3, 0.9), (1, 0.5), (0, 0.4)], []]
    r = besthit_fold(hits, y, "multilabel", np.array([0, 1]), np.array([2, 3]), 1)
    # Protein 2 gets {term 1} at 0.5 (precision 1, recall 1/2), protein 3 nothing (recall 0):
    # P = 1, R = 1/4, F = 0.4.
    assert r["test_fmax"] == pytest.approx(0.4) and r["test_hit_rate"] == 0.5
    cls = besthit_fold(hits, np.array([0, 1, 1, 0]), "multiclass", np.array([0, 1]),
                       np.array([2, 3]), 1)
    assert cls["test_accuracy"] == 1.0  # 2 ← protein 1's class 1; 3 ← the majority, 0 (tie)


def test_knn_probe_runs_side_by_side_with_the_homology_baseline(ray_session, data_dir,
                                                                tmp_path, monkeypatch,
                                                                capsys) -> None:
    import importlib.util

    import pandas as pd

    from mtdp.evaluate import homology

    spec = importlib.util.spec_from_file_location(
        "benchmark_cli", Path(__file__).resolve().parents[1] / "tune" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    common = ["--models", "aac", "--tasks", "go,localization", "--max-proteins", "400",
              "--probe", "knn", "--knn-k", "3", "--min-term-count", "5", "--data-dir",
              str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--experiment",
              "test-knn"]
    installed = homology.mmseqs_binary()
    monkeypatch.delenv("MTDP_MMSEQS", raising=False)
    from mtdp import clusters

    monkeypatch.setattr(clusters.shutil, "which", lambda name: None)
    assert cli.main([*common, "--output-dir", str(tmp_path / "a")]) == 0
    assert "mmseqs2-besthit baseline skipped: no `mmseqs` binary" in capsys.readouterr().out
    trials = pd.read_csv(tmp_path / "a" / "trials.csv")
    assert set(trials["model"]) == {"aac"} and (trials["epochs"] == 0).all()
    assert trials.loc[trials.task == "go", "test_fmax"].between(0.05, 1).all()
    assert trials.loc[trials.task == "localization", "test_accuracy"].between(0.05, 1).all()
    assert "annotation transfer from the 3 nearest" in (tmp_path / "a" / "summary.md").read_text()
    if not installed:
        pytest.skip("mmseqs not installed: the baseline's own run is not checked here")
    monkeypatch.setenv("MTDP_MMSEQS", installed)
    assert cli.main([*common, "--output-dir", str(tmp_path / "b")]) == 0
    trials = pd.read_csv(tmp_path / "b" / "trials.csv")
    base = trials[trials.model == "mmseqs2-besthit"]
    assert len(base) == len(trials) / 2 and base["test_hit_rate"].between(0, 1).all()
    assert "mmseqs2-besthit" in (tmp_path / "b" / "summary.md").read_text()
