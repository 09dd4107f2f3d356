"""The paper's efficiency comparison (MTDP, Fig. 1-style): seconds to embed 10,000 proteins
of 1,000 residues against parameters, for the student and the six models the paper compares,
measured side by side in one process and printed next to the paper's published figures.

Models (random weights of the real classes: timing does not depend on weight values):
``student`` (mtdp's fused path), ``mtdp-reference`` (the released MTDP model's computation:
stock T5, every protein padded to 1,001 tokens), ESM-2 8M / 35M / 150M / 650M (fair-esm),
ProtBert-BFD (``BertModel``) and the ProtT5-XL encoder. Each model embeds ``proteins`` (or
``student_proteins``) fixed-length proteins after one untimed protein; seconds per 10,000 are
extrapolated from that measured count, and labelled so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mtdp.embed import default_batch_tokens, embed_sequences
from mtdp.models.base import Embedder, best_device
from .perf import fixed_set, time_embed

#: Seconds per 10,000 proteins read off the paper's efficiency figure (its GPU), by model.
PUBLISHED = {"esm2_8m": 2500, "mtdp-reference": 5000, "esm2_35m": 3500, "esm2_150m": 6700,
             "protbert_bfd": 9500, "esm2_650m": 15200, "prott5_xl": 24700}
LABELS = {"student": "mtdp student (fused)", "mtdp-reference": "MTDP (released form)",
          "esm2_8m": "ESM-2 8M", "esm2_35m": "ESM-2 35M", "esm2_150m": "ESM-2 150M",
          "esm2_650m": "ESM-2 650M", "protbert_bfd": "ProtBert-BFD", "prott5_xl": "ProtT5-XL enc"}
MODELS = tuple(LABELS)
ESM2_NAMES = {"esm2_8m": "esm2_t6_8M_UR50D", "esm2_35m": "esm2_t12_35M_UR50D",
              "esm2_150m": "esm2_t30_150M_UR50D", "esm2_650m": "esm2_t33_650M_UR50D"}


def builders() -> dict[str, Callable[[], Embedder]]:
    from .throughput import build_esm2, build_protbert_bfd, build_prott5_xl, build_student

    return {"student": lambda: build_student(True),
            "mtdp-reference": lambda: build_student(False, "reference", "mtdp-reference"),
            **{k: (lambda k=k, hub=hub: build_esm2(hub, f"{k}-random"))
               for k, hub in ESM2_NAMES.items()},
            "protbert_bfd": build_protbert_bfd, "prott5_xl": build_prott5_xl}


@dataclass
class PaperSetConfig:
    models: tuple[str, ...] = MODELS
    length: int = 1000
    proteins: int = 2
    student_proteins: int = 16
    device: str = "auto"
    batch_tokens: int | None = None
    out_dir: str = "benchmarks/results"


def time_model(name: str, cfg: PaperSetConfig, device: torch.device) -> dict:
    t0 = time.perf_counter()
    emb = builders()[name]().to(device)
    built = time.perf_counter() - t0
    n = cfg.student_proteins if name in ("student", "mtdp-reference") else cfg.proteins
    seqs = fixed_set(n, cfg.length, seed=1)
    budget = cfg.batch_tokens or default_batch_tokens(device)
    # Warm-up on one other protein (not the timed set: that would double a teacher's cost).
    embed_sequences(emb, fixed_set(1, cfg.length, seed=2), batch_tokens=budget)
    timed = time_embed(emb, name, f"{cfg.length} aa", seqs, 1, budget, {})
    sec = timed.seconds
    row = {"model": name, "label": LABELS[name], "parameters": emb.num_parameters(),
           "measured": n, "seconds": sec, "per_10k_s": sec / n * 10_000,
           "gflop_per_protein": timed.flops / n / 1e9,
           "published_per_10k_s": PUBLISHED.get(name), "build_s": built}
    del emb
    return row


def run_paper_set(cfg: PaperSetConfig, log=print) -> list[dict]:
    device = best_device() if cfg.device == "auto" else torch.device(cfg.device)
    rows = []
    for name in cfg.models:
        rows.append(time_model(name, cfg, device))
        r = rows[-1]
        log(f"[paper-set] {r['label']:<22} {r['parameters'] / 1e6:8.1f} M params  "
            f"{r['seconds']:8.2f} s for {r['measured']} → {r['per_10k_s']:10.0f} s per 10k")
    out = Path(cfg.out_dir)
    write_report(rows, device, cfg, out / "efficiency.md")
    plot(rows, device, out / "efficiency.png")
    return rows


def write_report(rows: list[dict], device: torch.device, cfg: PaperSetConfig, path: Path) -> None:
    from mtdp.io import write_text

    ref = next((r for r in rows if r["model"] == "student"), None)
    lines = [f"# Embedding time vs parameters: the paper's comparison set ({device.type})", "",
             f"Each model embeds {cfg.proteins} (students: {cfg.student_proteins}) random "
             f"{cfg.length}-residue proteins after one untimed protein, one process, "
             "random weights of the real classes (timing does not depend on weight values); "
             "**seconds per 10,000 proteins are extrapolated from that measured count**. "
             "Published: read off the MTDP paper's efficiency figure (its GPU), for "
             "comparison of the ordering, not of the absolute times.", "",
             "| model | parameters | measured | s per 10k (extrapolated) | × student | "
             "GFLOP / protein | published s per 10k |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['per_10k_s'] / ref['per_10k_s']:.1f}" if ref else "—"
        pub = f"{r['published_per_10k_s']:,}" if r["published_per_10k_s"] else "—"
        lines.append(f"| {r['label']} | {r['parameters'] / 1e6:.1f} M | {r['measured']} × "
                     f"{cfg.length} aa in {r['seconds']:.2f} s | {r['per_10k_s']:,.0f} | "
                     f"{ratio} | {r['gflop_per_protein']:.0f} | {pub} |")
    write_text(path, "\n".join(lines) + "\n")


def plot(rows: list[dict], device: torch.device, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["parameters"], r["per_10k_s"], color="tab:blue")
        ax.annotate(r["label"], (r["parameters"], r["per_10k_s"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
        if r["published_per_10k_s"]:
            ax.scatter(r["parameters"], r["published_per_10k_s"], color="tab:orange",
                       marker="s")
    ax.scatter([], [], color="tab:blue", label=f"measured here ({device.type}, extrapolated)")
    ax.scatter([], [], color="tab:orange", marker="s", label="published (paper, its GPU)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("seconds per 10,000 proteins of 1,000 aa")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
