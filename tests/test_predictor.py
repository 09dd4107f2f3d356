"""``mtdp predict``: predictors on your own labels — learnable signal is learnt, grouped folds
keep relatives apart (a group-memorising signal scores at chance), and mistakes are named."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mtdp.cli import main
from mtdp.clusters import mmseqs_binary


def _npy(path, ids, x, model="m1"):
    np.save(path, x.astype(np.float32))
    path.with_suffix(".ids.txt").write_text("".join(i + "\n" for i in ids))
    path.with_suffix(".meta.json").write_text(json.dumps({"model": model}))
    return path


def _data(n=300, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    return [f"p{i}" for i in range(n)], x


def _tsv(path, header, rows):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n"
                                                       for r in rows))
    return path


def test_fit_and_apply_learn_a_real_signal(tmp_path, capsys) -> None:
    ids, x = _data(600)
    classes = np.array(["cytoplasm", "membrane", "nucleus"])[np.argmax(x[:, :3], axis=1)]
    emb = _npy(tmp_path / "train.npy", ids, x)
    labels = _tsv(tmp_path / "labels.tsv", ["id", "label"], zip(ids, classes))
    assert main(["predict", "fit", str(emb), str(labels), "-o", str(tmp_path / "p")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "multiclass" and out["classes"] == 3
    assert out["cv"]["accuracy"]["mean"] > 0.75 and out["cv"]["accuracy"]["se"] > 0  # chance 0.33
    import mlflow  # the fit is logged like the benchmark (conftest: a test-session SQLite)

    run = mlflow.get_run(out["mlflow_run"])
    assert run.data.tags["mtdp.kind"] == "predictor" and run.data.params["kind"] == "multiclass"
    assert abs(run.data.metrics["cv_accuracy_mean"] - out["cv"]["accuracy"]["mean"]) < 1e-9
    new_ids, new_x = _data(100, seed=1)
    new = _npy(tmp_path / "new.npy", new_ids, new_x)
    assert main(["predict", "apply", str(tmp_path / "p"), str(new), "-o",
                 str(tmp_path / "pred.tsv")]) == 0
    lines = (tmp_path / "pred.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["id", "prediction", "p_cytoplasm", "p_membrane",
                                    "p_nucleus"]
    truth = np.array(["cytoplasm", "membrane", "nucleus"])[np.argmax(new_x[:, :3], axis=1)]
    got = np.array([line.split("\t")[1] for line in lines[1:]])
    assert (got == truth).mean() > 0.75
    proba = np.array([[float(v) for v in line.split("\t")[2:]] for line in lines[1:]])
    assert np.allclose(proba.sum(1), 1.0, atol=2e-3)  # softmax over the classes
    assert np.array_equal(np.array(["cytoplasm", "membrane", "nucleus"])[proba.argmax(1)], got)


def test_regression_and_multilabel_are_inferred(tmp_path, capsys) -> None:
    ids, x = _data()
    emb = _npy(tmp_path / "e.npy", ids, x)
    y = x[:, 0] * 2 + x[:, 1]
    _tsv(tmp_path / "r.tsv", ["id", "tm"], zip(ids, np.round(y, 3)))
    assert main(["predict", "fit", str(emb), str(tmp_path / "r.tsv"), "--label-column", "tm",
                 "-o", str(tmp_path / "r")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "regression" and out["cv"]["spearman"]["mean"] > 0.8
    terms = [";".join(t for t, on in zip(["GO:1", "GO:2"], (a > 0, b > 0)) if on) or "GO:3"
             for a, b in x[:, :2]]
    _tsv(tmp_path / "m.tsv", ["id", "label"], zip(ids, terms))
    assert main(["predict", "fit", str(emb), str(tmp_path / "m.tsv"), "-o",
                 str(tmp_path / "m")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "multilabel" and out["classes"] == 3
    assert out["cv"]["f1_micro"]["mean"] > 0.7


def test_grouped_folds_do_not_reward_memorised_relatives(tmp_path, capsys) -> None:
    """Labels that only follow family identity: random folds see every family in training
    and score high; folds grouped by family must not."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 16)) * 3
    fam = np.repeat(np.arange(30), 10)
    x = centres[fam] + rng.normal(size=(300, 16)) * 0.3
    label = rng.integers(0, 2, 30)[fam]
    ids = [f"p{i}" for i in range(300)]
    emb = _npy(tmp_path / "e.npy", ids, x)
    _tsv(tmp_path / "l.tsv", ["id", "label", "family"], zip(ids, label, fam))
    scores = {}
    for name, extra in (("random", []), ("grouped", ["--group-column", "family"])):
        assert main(["predict", "fit", str(emb), str(tmp_path / "l.tsv"), "-o",
                     str(tmp_path / name), *extra]) == 0
        scores[name] = json.loads(capsys.readouterr().out)["cv"]["accuracy"]["mean"]
    assert scores["random"] > 0.9 and scores["grouped"] < 0.75


def _family_data(tmp_path):
    """30 families of 10 near-identical sequences whose label follows the family (a label that
    only memorised relatives can predict), embeddings that separate the families."""
    rng = np.random.default_rng(0)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    seqs, ids = [], [f"p{i}" for i in range(300)]
    for f in range(30):
        root = rng.choice(aa, 120)
        for _ in range(10):
            s = root.copy()
            s[rng.choice(120, 6, replace=False)] = rng.choice(aa, 6)
            seqs.append("".join(s))
    fam = np.repeat(np.arange(30), 10)
    x = rng.normal(size=(30, 16))[fam] * 3 + rng.normal(size=(300, 16)) * 0.3
    (tmp_path / "s.fasta").write_text("".join(f">{i}\n{s}\n" for i, s in zip(ids, seqs)))
    _tsv(tmp_path / "l.tsv", ["id", "label"], zip(ids, rng.integers(0, 2, 30)[fam]))
    return _npy(tmp_path / "e.npy", ids, x)


@pytest.mark.skipif(mmseqs_binary() is None, reason="no mmseqs here (apt install mmseqs2)")
def test_sequences_give_folds_by_mmseqs2_cluster(tmp_path, capsys) -> None:
    emb = _family_data(tmp_path)
    assert main(["predict", "fit", str(emb), str(tmp_path / "l.tsv"), "-o", str(tmp_path / "p"),
                 "--sequences", str(tmp_path / "s.fasta"), "--no-mlflow"]) == 0
    got = capsys.readouterr()
    out = json.loads(got.out)
    assert "folds follow 30 MMseqs2 clusters of 300 proteins" in got.err
    assert out["cv"]["accuracy"]["mean"] < 0.75  # families never on both sides: chance
    card = json.loads((tmp_path / "p" / "predictor.json").read_text())
    assert card["cv"]["grouped_by"].startswith("mmseqs2 clusters")


def test_random_folds_are_said(tmp_path, capsys, monkeypatch) -> None:
    emb = _family_data(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no mmseqs on PATH
    monkeypatch.delenv("MTDP_MMSEQS", raising=False)
    assert main(["predict", "fit", str(emb), str(tmp_path / "l.tsv"), "-o", str(tmp_path / "p"),
                 "--sequences", str(tmp_path / "s.fasta"), "--no-mlflow"]) == 0
    err = capsys.readouterr().err
    assert "random folds (no `mmseqs` binary to cluster --sequences" in err
    assert "apt install mmseqs2" in err


def test_mistakes_are_named(tmp_path, capsys) -> None:
    ids, x = _data(40)
    emb = _npy(tmp_path / "e.npy", ids, x)
    _tsv(tmp_path / "l.tsv", ["id", "label"], [*zip(ids, ["a", "b"] * 20), ("ghost", "a")])
    assert main(["predict", "fit", str(emb), str(tmp_path / "l.tsv"), "-o",
                 str(tmp_path / "p")]) == 2
    assert "have no embedding" in capsys.readouterr().err and not (tmp_path / "p").exists()
    _tsv(tmp_path / "d.tsv", ["id", "label"], [("p1", "a"), ("p2", "b"), ("p1", "b")])
    assert main(["predict", "fit", str(emb), str(tmp_path / "d.tsv"), "-o",
                 str(tmp_path / "p")]) == 2
    assert "line 4: id 'p1' already given on line 2" in capsys.readouterr().err
    _tsv(tmp_path / "ok.tsv", ["id", "label"], zip(ids, ["a", "b"] * 20))
    assert main(["predict", "fit", str(emb), str(tmp_path / "ok.tsv"), "-o",
                 str(tmp_path / "p")]) == 0
    capsys.readouterr()
    other = _npy(tmp_path / "o.npy", ids, np.zeros((40, 8)))
    assert main(["predict", "apply", str(tmp_path / "p"), str(other), "-o",
                 str(tmp_path / "x.tsv")]) == 2
    assert "8-d embeddings, the predictor was fitted on 16-d" in capsys.readouterr().err
    wrong = _npy(tmp_path / "w.npy", ids, x, model="m2")
    assert main(["predict", "apply", str(tmp_path / "p"), str(wrong), "-o",
                 str(tmp_path / "x.tsv")]) == 2
    assert "holds m2 embeddings" in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_map_draws_every_protein_and_keeps_groups_apart(tmp_path, capsys, method) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(60, 16)), rng.normal(size=(60, 16)) + 6])
    ids = [f"p{i}" for i in range(120)]
    emb = _npy(tmp_path / "e.npy", ids, x)
    _tsv(tmp_path / "l.tsv", ["id", "label"], zip(ids, ["a"] * 60 + ["b"] * 60))
    assert main(["map", str(emb), "-o", str(tmp_path / "map.tsv"), "--method", method,
                 "--labels", str(tmp_path / "l.tsv")]) == 0
    rows = [r.split("\t") for r in (tmp_path / "map.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ids
    xy = np.array([[float(r[1]), float(r[2])] for r in rows])
    gap = np.linalg.norm(xy[:60].mean(0) - xy[60:].mean(0))
    assert gap > 2 * xy[:60].std(0).max()  # the two groups land apart
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "map.html").read_text()
    data = json.loads(page.split('id="data">')[1].split("</script>")[0])
    assert data["ids"] == ids and data["classes"] == ["a", "b"]
    assert data["c"] == [0] * 60 + [1] * 60 and "http" not in page.replace(
        "http://www.w3.org/2000/svg", "")  # self-contained: nothing fetched


def test_map_subsamples_large_inputs_with_a_stated_seed(tmp_path, capsys) -> None:
    ids, x = _data(50)
    emb = _npy(tmp_path / "e.npy", ids, x)
    assert main(["map", str(emb), "-o", str(tmp_path / "m.html"), "--max-points", "20",
                 "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["proteins"] == 20 and out["of"] == 50 and out["html"].endswith("m.html")
    rows = (tmp_path / "m.tsv").read_text().splitlines()[1:]
    assert len(rows) == 20 and len({r.split("\t")[0] for r in rows}) == 20
    assert "20 of 50 proteins (random subsample, seed 3)" in (tmp_path / "m.html").read_text()


def test_map_umap_without_umap_learn_says_what_to_install(tmp_path, capsys) -> None:
    try:
        import umap  # noqa: F401
        pytest.skip("umap-learn is installed here")
    except ImportError:
        pass
    ids, x = _data(20)
    emb = _npy(tmp_path / "e.npy", ids, x)
    assert main(["map", str(emb), "-o", str(tmp_path / "m.tsv"), "--method", "umap"]) == 2
    assert "pip install umap-learn" in capsys.readouterr().err
