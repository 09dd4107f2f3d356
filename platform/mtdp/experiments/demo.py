"""The embedded default of ``python jobs/distill.py``: a few hundred real proteins, precomputed
once, then distilled — settings in ``jobs/configs/demo.yaml`` (a config file, not code)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config, option
from ..distill import DistillConfig
from ..precompute import PrecomputeConfig, run_precompute
from ..sequences import write_fasta
from ..teacher_data import MANIFEST_FILE
from ..benchmarks.pools import first_proteins

#: The demo's settings file in a source checkout.
DEMO_CONFIG = Path(__file__).resolve().parents[3] / "jobs" / "configs" / "demo.yaml"


@dataclass
class DemoConfig(Config):
    """The demo: which proteins and teachers, and the distillation settings."""

    workdir: str = option("runs/demo", help="where the dataset, student and checkpoints go")
    proteins: int = option(400, ge=16, help=(
        "the first N DeepLoc 2.0 proteins of partitions 0-3 (partition 4 stays unseen)"))
    max_len: int = option(256, ge=1, help="truncate the demo's proteins to this many residues")
    teachers: list[str] = option(factory=lambda: ["tiny-random-esm2", "tiny-random-t5"],
                                 help="teachers to precompute")
    validation_fraction: float = option(0.1, gt=0.0, lt=1.0, help="held-out share")
    distill: dict[str, Any] = option(factory=dict, help="DistillConfig fields of the run")


def load_demo(path: str | Path = DEMO_CONFIG) -> DemoConfig:
    """The demo's settings from its YAML file."""
    return load_config(DemoConfig, path)


def demo_dataset(cfg: DemoConfig) -> str:
    """The demo's teacher dataset, precomputed once into ``WORKDIR/teachers``."""
    work = Path(cfg.workdir).resolve()
    out = work / "teachers"
    if (out / MANIFEST_FILE).is_file():
        return str(out)
    ids, seqs = first_proteins(cfg.proteins, max_len=None)
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / "deeploc2_sample.fasta"
    write_fasta(zip(ids, seqs), fasta)
    print(f"precomputing {len(ids)} proteins with {cfg.teachers} -> {out}", flush=True)
    run_precompute(PrecomputeConfig(inputs=[str(fasta)], teachers=cfg.teachers,
                                    output=str(out), max_len=cfg.max_len,
                                    validation_fraction=cfg.validation_fraction))
    return str(out)


def demo_distill_config(cfg: DemoConfig) -> DistillConfig:
    """The run's :class:`DistillConfig` (precomputing its dataset first if needed)."""
    return DistillConfig(**{"output": str(Path(cfg.workdir).resolve()), **cfg.distill,
                            "data": demo_dataset(cfg)})
