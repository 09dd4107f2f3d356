"""The in-process paper-scale run (issue 19) at a tiny size on CPU, with composition teachers
standing in for the UniReps; and its token-budget training batches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtdp.distill.local import token_batches
from mtdp.experiments.gpu_scale import GpuScaleConfig, run_gpu_scale


def test_token_batches_cover_each_protein_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(20, 400, size=300)
    batches = token_batches(lengths, 2000, seed=1)
    flat = np.concatenate(batches)
    assert sorted(flat) == list(range(300))
    assert all(len(b) * (lengths[b].max() + 1) <= 2000 or len(b) == 1 for b in batches)
    assert [len(b) for b in token_batches(lengths, 2000, seed=2)] != [len(b) for b in batches]


def test_tiny_gpu_scale_run_on_cpu(tmp_path: Path):
    cfg = GpuScaleConfig(pool=64, epochs=1, task_proteins=40, tasks="membrane,esol",
                         preset="tiny", max_len=128, batch_tokens=2048, teachers="kmer2,aac",
                         modes="rl,uniform,none", folds=2, device="cpu",
                         workdir=str(tmp_path))
    md = run_gpu_scale(cfg, log=print).read_text()
    data = json.loads((tmp_path / "gpu_scale.json").read_text())
    assert set(data["scores"]) == {"kmer2", "aac", "student-rl", "student-uniform",
                                   "student-none", "random-init"}
    assert all(len(v) == 2 for s in data["scores"].values() for v in s.values())
    assert "student-rl − student-uniform" in md and "distil rl" in " ".join(data["stages"])
    assert len(list(tmp_path.glob("run-*/students/rl/config.json"))) == 1
