"""The in-process paper-scale run (issue 19) at a tiny size on CPU, with composition teachers
standing in for the UniReps; and its token-budget training batches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtdp.distill.local import token_batches
from mtdp_studies.gpu_scale import GpuScaleConfig, run_gpu_scale


def test_token_batches_cover_each_protein_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(20, 400, size=300)
    batches = token_batches(lengths, 2000, seed=1)
    flat = np.concatenate(batches)
    assert sorted(flat) == list(range(300))
    assert all(len(b) * (lengths[b].max() + 1) <= 2000 or len(b) == 1 for b in batches)
    assert [len(b) for b in token_batches(lengths, 2000, seed=2)] != [len(b) for b in batches]


def test_tiny_gpu_scale_run_on_cpu(tmp_path: Path):
    """The device run's exact code at a tiny size on CPU: Swiss-Prot crops labelled by two
    tiny random teachers (window means), the recipe's students (uniform and single), their
    untrained start point, probes with gain capture and R²; students come back in float16."""
    cfg = GpuScaleConfig(pool=64, max_len=64, window=4, epochs=1, task_proteins=40,
                         tasks="membrane,esol", students="tiny",
                         teachers="tiny-random-t5,tiny-random-esm2",
                         modes="uniform,single:tiny-random-t5", batch_tokens=2048, folds=2,
                         device="cpu", workdir=str(tmp_path))
    md = run_gpu_scale(cfg, log=print).read_text()
    data = json.loads((tmp_path / "gpu_scale.json").read_text())
    assert set(data["scores"]) == {"tiny-random-t5", "tiny-random-esm2", "aac",
                                   "student-tiny-uniform", "student-tiny-single-tiny-random-t5",
                                   "random-init-tiny"}
    assert all(len(v) == 2 for s in data["scores"].values() for v in s.values())
    assert "Ridge R² of tiny-random-t5" in md and "± " in md
    assert "distil tiny-uniform" in " ".join(data["stages"])
    saved = list(tmp_path.glob("run-*/students/tiny-uniform/model.safetensors"))
    assert len(saved) == 1
    from safetensors import safe_open

    with safe_open(str(saved[0]), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
