"""Benchmark tasks, folds, baselines, the embedding cache and the probe (no Ray here)."""
from __future__ import annotations

import csv

from pathlib import Path

import numpy as np
import pytest

from mtdp.embed import embed_sequences
from mtdp.evaluate import TaskUnavailable, available_tasks, load_task
from mtdp.models.baselines import KmerEmbedder, load_baseline
from mtdp.evaluate.probes import ProbeConfig, fold_hash, make_folds, train_probe
from mtdp.evaluate.cache import cached_embeddings
from mtdp.store.keys import fingerprint as model_identity
from mtdp.store.keys import fingerprint_key as model_key
from mtdp.evaluate.sources import read_deepfri_annot
from mtdp.evaluate.tasks import resolve_task_names
from mtdp.models.registry import load_embedder


def test_shared_data_tasks_load_prepared_and_deduplicated(data_dir: Path):
    present = available_tasks(data_dir)
    assert {"membrane", "localization", "meltome", "esol", "deepsol"} <= set(present)
    assert "go" in present and "go_pdb" not in present  # DeepFRI's set is not shipped
    mem = load_task("membrane", data_dir, max_proteins=300, seed=1)
    assert mem.kind == "binary" and mem.classes == ["soluble", "membrane"]
    assert len(mem) == 300 and set(np.unique(mem.labels)) == {0, 1}
    assert any("SUBSAMPLED" in n for n in mem.notes)
    assert max(len(s) for s in mem.sequences) <= 1000
    assert len(set(mem.sequences)) == len(mem.sequences)
    loc = load_task("localization", data_dir, max_proteins=400, seed=1)
    assert loc.kind == "multiclass" and 2 <= len(loc.classes) <= 10
    assert np.bincount(loc.labels).min() >= 10  # rare classes are dropped, and said so
    melt = load_task("meltome", data_dir)
    assert melt.kind == "regression" and melt.labels.dtype == np.float32
    assert melt.partial and any("PARTIAL" in n for n in melt.notes)
    assert any("duplicate" in n for n in melt.notes)  # FLIP val repeats sequences
    assert 20 < float(melt.labels.mean()) < 80  # °C
    esol = load_task("esol", data_dir)
    assert 0 <= esol.labels.min() and esol.labels.max() <= 1.5
    # Same request, same proteins (cache key); different seed, different subset.
    sub = load_task("esol", data_dir, max_proteins=50, seed=1)
    assert load_task("esol", data_dir, max_proteins=50, seed=1).data_hash() == sub.data_hash()
    assert load_task("esol", data_dir, max_proteins=50, seed=2).data_hash() != sub.data_hash()


def _write_deepfri(folder: Path) -> None:
    """A small file in DeepFRI's nrPDB-GO annotation layout (+ its FASTA)."""
    go = folder / "go"
    go.mkdir(parents=True)
    mf = ["GO:0000001", "GO:0000002", "GO:0000003"]
    lines = ["### GO-terms (molecular_function)", "\t".join(mf),
             "### GO-names (molecular_function)", "\t".join(["a", "b", "c"]),
             "### GO-terms (biological_process)", "GO:0000010",
             "### GO-names (biological_process)", "x",
             "### GO-terms (cellular_component)", "GO:0000020",
             "### GO-names (cellular_component)", "y",
             "### PDB-chain\tGO-terms (molecular_function)\tGO-terms (biological_process)\t"
             "GO-terms (cellular_component)"]
    rng = np.random.default_rng(0)
    fasta = []
    for i in range(30):
        terms = [t for t in mf if rng.random() < 0.5] or [mf[0]]
        lines.append(f"1AB{i}-A\t{','.join(terms)}\tGO:0000010\t")
        fasta.append(f">1AB{i}-A\n" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 50)))
    lines.append("9ZZZ-B\t\tGO:0000010\tGO:0000020")  # no MF term: not an MF protein
    fasta.append(">9ZZZ-B\nMKVLA")
    (go / "nrPDB-GO_annot.tsv").write_text("\n".join(lines) + "\n")
    (go / "nrPDB-GO_sequences.fasta").write_text("\n".join(fasta) + "\n")


def test_go_loader_reads_deepfri_format_and_skips_when_absent(tmp_path: Path):
    with pytest.raises(TaskUnavailable, match="DeepFRI"):
        load_task("go_pdb", tmp_path)
    _write_deepfri(tmp_path)
    annot, vocab = read_deepfri_annot(tmp_path / "go" / "nrPDB-GO_annot.tsv", "mf")
    assert vocab == ["GO:0000001", "GO:0000002", "GO:0000003"] and annot["9ZZZ-B"] == []
    task = load_task("go_pdb", tmp_path, min_class_count=2)
    assert task.kind == "multilabel" and len(task) == 30 and "9ZZZ-B" not in task.ids
    assert task.labels.shape == (30, 3) and task.labels.sum(1).min() >= 1
    assert task.partitions is None  # DeepFRI's files carry no homology partitions
    assert available_tasks(tmp_path) == []  # the default 'go' is the Swiss-Prot set
    bad = tmp_path / "bad.tsv"
    bad.write_text("GO:1\tGO:2\n")
    with pytest.raises(ValueError, match="not a DeepFRI"):
        read_deepfri_annot(bad)


def test_task_name_resolution():
    assert resolve_task_names("all") == ["membrane", "localization", "go", "meltome", "esol",
                                         "deepsol"]
    with pytest.raises(ValueError, match="unknown task"):
        resolve_task_names("membrane,stability")


def test_folds_are_a_seeded_stratified_partition():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 20)
    folds = make_folds("multiclass", labels, 10, 42)
    assert sorted(np.concatenate(folds).tolist()) == list(range(110))
    for f in folds:
        assert np.bincount(labels[f], minlength=3).tolist() == [6, 3, 2]  # stratified
    assert all((a == b).all() for a, b in zip(folds, make_folds("multiclass", labels, 10, 42)))
    assert any((a != b).any() for a, b in zip(folds, make_folds("multiclass", labels, 10, 7)))
    reg = make_folds("regression", np.linspace(0, 1, 25), 5, 42)
    assert [len(f) for f in reg] == [5] * 5
    ids = [f"p{i}" for i in range(110)]
    assert fold_hash(ids, folds[0]) == fold_hash(list(ids), folds[0].copy())


def test_kmer_and_aac_features_hand_computed():
    k2 = KmerEmbedder(2)
    v = k2.features("ACA")
    a, c = "ACDEFGHIKLMNPQRSTVWY".index("A"), "ACDEFGHIKLMNPQRSTVWY".index("C")
    assert v[a] == pytest.approx(2 / 3) and v[c] == pytest.approx(1 / 3)
    assert v[20 + a * 20 + c] == pytest.approx(0.5) and v[20 + c * 20 + a] == pytest.approx(0.5)
    assert v[20:].sum() == pytest.approx(1.0) and k2.dim == 420
    # X residues break k-mers instead of being counted as a residue.
    assert KmerEmbedder(2).features("AXA")[20:].sum() == 0.0
    aac = load_embedder("aac")
    emb = embed_sequences(aac, ["AAAC", "MKV"])
    assert emb.shape == (2, 20) and emb[0, a] == pytest.approx(0.75)
    assert load_embedder("kmer3").dim == 8420
    with pytest.raises(ValueError, match="between 1 and 3"):
        KmerEmbedder(4)
    with pytest.raises(ValueError, match="between 1 and 3"):
        load_embedder("kmer9")
    with pytest.raises(ValueError, match="no-weight baseline"):
        load_embedder("kmer")


def test_random_student_baseline_is_seeded_and_untrained():
    a = load_baseline("random-student:tiny")
    b = load_embedder("random-student:tiny", device="cpu")
    assert not a.pretrained and a.num_parameters() > 0
    x = ["MKTAYIAKQR", "GSHMLE"]
    np.testing.assert_array_equal(embed_sequences(a, x), embed_sequences(b, x))
    assert model_key(model_identity(a)) == model_key(model_identity(b))


def test_embedding_cache_embeds_once(tmp_path: Path, data_dir: Path):
    """The benchmark's embeddings go through the store: a second call computes nothing, and
    reports the throughput the store recorded for the model."""
    from mtdp.store import EmbeddingStore

    task = load_task("esol", data_dir, max_proteins=40, seed=0)
    model = load_embedder("tiny-random-esm2", device="cpu")
    first, rate, hit, count = cached_embeddings(model, task, tmp_path)
    assert not hit and rate > 0 and count == 40 and first.shape == (40, model.dim)
    again, rate2, hit2, count2 = cached_embeddings(model, task, tmp_path)
    assert hit2 and rate2 == pytest.approx(rate, rel=1e-3) and count2 == 0
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first[:3], embed_sequences(model, task.sequences[:3]), atol=1e-5)
    store = EmbeddingStore(tmp_path)
    (m,) = store.models()
    assert store.model(m["identity"], m["name"]).count() == 40


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression"])
def test_probe_learns_a_learnable_problem(kind):
    rng = np.random.default_rng(0)
    n, d = 240, 8
    X = rng.normal(size=(n, d)).astype(np.float32) * 5 + 3  # unstandardised on purpose
    z = X[:, 0] - X[:, 1]
    if kind == "binary":
        y = (z > 0).astype(np.int64)
    elif kind == "multiclass":
        y = np.digitize(z, np.quantile(z, [0.33, 0.66])).astype(np.int64)
    elif kind == "multilabel":
        y = np.stack([z > 0, X[:, 2] > 3, X[:, 3] < 3], 1).astype(np.float32)
    else:
        y = (2 * z + rng.normal(size=n)).astype(np.float32)
    folds = make_folds(kind, y if kind != "multilabel" else y[:, 0], 5, 42)
    train = np.sort(np.concatenate(folds[1:]))
    cfg = ProbeConfig(hidden=32, max_epochs=25, patience=5, lr=1e-2, batch_size=64)
    res = train_probe(X, y, kind, train, folds[0], cfg, seed=0)
    primary = {"binary": "test_f1_macro", "multiclass": "test_accuracy",
               "multilabel": "test_fmax", "regression": "test_spearman"}[kind]
    assert res[primary] > 0.8, res
    assert res["n_test"] == len(folds[0]) and res["n_val"] > 0
    assert res["n_train"] + res["n_val"] == len(train)  # inner split inside the train folds
    if kind == "binary":
        paper = train_probe(X, y, kind, train, folds[0], cfg, protocol="paper", seed=0)
        assert paper["n_val"] == 0 and "val_loss" not in paper
        assert paper["test_f1_macro"] >= 0.8


def _go_clusters(data_dir: Path) -> dict[str, str]:
    import gzip

    with gzip.open(data_dir / "go" / "go_mf_swissprot2014.csv.gz", "rt") as fh:
        return {r["accession"]: r["cluster"] for r in csv.DictReader(fh)}


def test_go_task_from_the_shared_swissprot_set(data_dir: Path):
    task = load_task("go", data_dir, max_proteins=3000, seed=1)
    assert task.kind == "multilabel" and len(task) <= 3000
    assert task.labels.shape == (len(task), len(task.classes)) and task.labels.sum(1).min() >= 1
    assert all(c.startswith("GO:") for c in task.classes)
    assert any("NOT THE PAPER'S GO SET" in n for n in task.notes)  # said in every report
    # Propagated labels: 'binding' (GO:0005488) is an ancestor of 'ATP binding' (GO:0005524).
    col = {t: j for j, t in enumerate(task.classes)}
    atp = task.labels[:, col["GO:0005524"]] > 0
    assert atp.any() and (task.labels[atp, col["GO:0005488"]] > 0).all()
    assert task.partitions is not None and set(np.unique(task.partitions)) == set(range(10))


def test_homology_folds_keep_every_cluster_on_one_side(data_dir: Path):
    from mtdp.evaluate.probes import task_folds

    go = load_task("go", data_dir, max_proteins=3000, seed=1)
    cluster = _go_clusters(data_dir)
    folds, line = task_folds(go, "homology", 10, 42)
    assert len(folds) == 10 and "homology" in line and "MMseqs2" in line
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(go)))  # a partition
    for test in folds:
        train = np.setdiff1d(np.arange(len(go)), test)
        assert not ({cluster[go.ids[i]] for i in test} & {cluster[go.ids[i]] for i in train})
    # Random folds over the same proteins do put clusters on both sides (what they flatter).
    rnd, line = task_folds(go, "random", 10, 42)
    assert "random" in line
    test = rnd[0]
    train = np.setdiff1d(np.arange(len(go)), test)
    assert {cluster[go.ids[i]] for i in test} & {cluster[go.ids[i]] for i in train}
    # DeepLoc 2.0: 5 partitions → 5 folds even if 10 are asked; each fold one partition.
    loc = load_task("localization", data_dir, max_proteins=600, seed=1)
    folds, line = task_folds(loc, "homology", 10, 42)
    assert len(folds) == 5 and all(len(np.unique(loc.partitions[f])) == 1 for f in folds)
    # No homology information: random folds, and the line says so.
    esol = load_task("esol", data_dir, max_proteins=200, seed=1)
    folds, line = task_folds(esol, "homology", 4, 42)
    assert len(folds) == 4 and "NO HOMOLOGY INFORMATION" in line


def test_go_terms_are_chosen_per_fold_from_the_training_side_only():
    rng = np.random.default_rng(0)
    n = 200
    X = rng.normal(size=(n, 8)).astype(np.float32)
    test_idx, train_idx = np.arange(40), np.arange(40, n)
    y = np.zeros((n, 3), dtype=np.float32)
    y[:, 0] = rng.random(n) < 0.5            # common on both sides: scored
    y[test_idx, 1] = 1.0                     # frequent in the test fold only: never scored
    y[train_idx[:10], 2] = 1.0               # 10 training proteins < 20: not scored
    cfg = ProbeConfig(hidden=8, max_epochs=2, patience=1, min_term_count=20)
    res = train_probe(X, y, "multilabel", train_idx, test_idx, cfg)
    assert res["n_terms"] == 1 and 0 <= res["test_fmax"] <= 1
    assert 0 < res["test_fmax_coverage"] <= 1
    cfg = ProbeConfig(hidden=8, max_epochs=2, patience=1, min_term_count=10)
    assert train_probe(X, y, "multilabel", train_idx, test_idx, cfg)["n_terms"] == 2
    with pytest.raises(ValueError, match="no term has 500 or more"):
        train_probe(X, y, "multilabel", train_idx, test_idx,
                    ProbeConfig(hidden=8, max_epochs=1, min_term_count=500))


def test_naive_go_baseline_scores_term_frequencies(data_dir: Path):
    from mtdp.evaluate.probes import naive_fmax

    go = load_task("go", data_dir, max_proteins=1000, seed=3)
    f = naive_fmax(go, "homology", 5, min_term_count=20)
    assert len(f) == 5 and all(0.2 < x < 0.7 for x in f)  # frequent ancestors: a high floor
