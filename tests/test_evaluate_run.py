"""End-to-end benchmark on the shared data: Ray Tune trials, summary, figure, MLflow.

Small subsets and few epochs keep this fast on 2 cores; the full-size run is the CLI's job
(see benchmarks/results/).
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pandas as pd
import pytest

from mtdp.evaluate.config import BenchmarkConfig
from mtdp.evaluate.runner import run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tune" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_ten_fold_benchmark_kmer_and_tiny_teacher(ray_session, data_dir, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = BenchmarkConfig(models="kmer2,tiny-random-esm2", tasks="all", folds=10,
                          max_proteins=100, max_epochs=2, patience=2, hidden=32,
                          threads=1, batch_tokens=2048, data_dir=str(data_dir),
                          output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                          experiment="test-benchmark")
    t0 = time.perf_counter()
    result = run_benchmark(cfg)
    print(f"\n10-fold benchmark, 2 models x {len(result.tasks)} tasks: "
          f"{time.perf_counter() - t0:.1f} s")

    tasks = {t.name for t in result.tasks}
    assert tasks == {"membrane", "localization", "go", "meltome", "esol", "deepsol"}
    # Default split 'homology': DeepLoc 2.0 tasks follow its 5 partitions, GO its 10;
    # tasks without homology information get random 10-fold (and the report says so).
    n_folds = {"membrane": 5, "localization": 5, "go": 10, "meltome": 10, "esol": 10,
               "deepsol": 10}
    trials = result.trials
    assert len(trials) == 2 * sum(n_folds.values()) and trials["selected"].all()
    per_task = trials.groupby(["model", "task"])["fold"].nunique()
    assert all(per_task[(m, t)] == n for m in ("kmer2", "tiny-random-esm2")
               for t, n in n_folds.items())
    # Same seeds -> the same test proteins for every model, fold by fold.
    per_fold = trials.groupby(["task", "fold"])["test_fold_hash"].nunique()
    assert per_fold.eq(1).all()
    assert trials.groupby("task")["test_fold_hash"].nunique().to_dict() == n_folds
    assert (trials["n_val"] > 0).all()  # inner validation split inside the training folds
    go = trials[trials["task"] == "go"]
    assert go["test_fmax"].between(0, 1).all() and (go["n_terms"] >= 1).all()

    out = Path(cfg.output_dir)
    md = (out / "summary.md").read_text()
    assert "kmer2" in md and "tiny-random-esm2" in md and "PARTIAL" in md and "±" in md
    assert "split: homology, 5 folds from DeepLoc 2.0" in md and "NO HOMOLOGY INFORMATION" in md
    assert "NOT THE PAPER'S GO SET" in md
    summary = pd.read_csv(out / "summary.csv")
    prim = summary[summary["primary"]]
    assert len(prim) == 12 and prim["mean"].notna().all()
    assert all(n_folds[t] == f for t, f in zip(prim["task"], prim["folds"]))
    png = (out / "benchmark.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000

    client = MlflowClient()
    exp = mlflow.get_experiment_by_name("test-benchmark")
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.run_id}'",
                                  max_results=1000)
    assert len(children) == len(trials)
    folds = {(r.data.params["model"], r.data.params["task"], r.data.params["fold"])
             for r in children}
    assert len(folds) == len(trials)
    assert all("test_" + ("f1_macro" if r.data.params["kind"] == "binary" else
                          "accuracy" if r.data.params["kind"] == "multiclass" else
                          "fmax" if r.data.params["kind"] == "multilabel" else "spearman")
               in r.data.metrics for r in children)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"summary.md", "summary.csv", "benchmark.png", "trials.csv"} <= artifacts

    # A second run with a new probe setting embeds nothing: every embedding is in the store.
    assert all(sum(m.embedded.values()) > 0 for m in result.models)
    cached = BenchmarkConfig(**{**cfg.__dict__, "tasks": "esol", "folds": 2,
                                "output_dir": str(tmp_path / "out2")})
    again = run_benchmark(cached)
    assert len(again.trials) == 4
    assert [m.embedded for m in again.models] == [{"esol": 0}, {"esol": 0}]
    from mtdp.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "cache", create=False)
    assert len(store.models()) == 2


@pytest.mark.slow
def test_cli_search_and_paper_protocol(ray_session, data_dir, tmp_path, capsys):
    cli = _cli()
    common = ["--models", "aac", "--tasks", "esol", "--max-proteins", "60", "--max-epochs", "3",
              "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
              "--experiment", "test-benchmark-cli"]
    out = tmp_path / "search"
    assert cli.main(common + ["--folds", "3", "--search", "2", "--output-dir", str(out)]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 6 and trials["selected"].sum() == 3
    for _, g in trials.groupby("fold"):  # chosen on the inner validation loss only
        assert g.loc[g["selected"], "val_loss"].iloc[0] == g["val_loss"].min()
    assert trials["lr"].nunique() > 1  # hyper-parameters were actually sampled
    paper = tmp_path / "paper"
    assert cli.main(common + ["--folds", "2", "--protocol", "paper", "--output-dir",
                              str(paper)]) == 0
    assert "OPTIMISTIC" in (paper / "summary.md").read_text()
    assert "benchmark finished in" in capsys.readouterr().out
    assert cli.main(common + ["--protocol", "best-case"]) == 2


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        _cli().main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--models", "--tasks", "--folds", "--max-proteins", "--protocol", "--search",
                 "--output-dir", "--cache-dir", "--cpus-per-trial", "--list-tasks"):
        assert flag in text
