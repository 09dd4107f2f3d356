"""The selector study's tables (:mod:`.selector_study`): references; per teacher set every
run's scores and gain capture, paired gain-capture differences (jackknife SE over the shared
folds) and what they say about the issue's questions, R² per group, selection rates."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mtdp.io import write_text

#: Paired comparisons shown per set: (a, b).
PAIRS = [("oracle", "uniform"), ("rl+contrast", "uniform"), ("rl+contrast", "oracle"),
         ("rl", "uniform"), ("rl", "oracle"), ("rl+contrast", "rl"),
         ("rl+contrast/batch", "rl+contrast"), ("random", "uniform")]


def difference(a: dict, b: dict, refs: dict, task: str) -> tuple[float, float]:
    """Gain capture of run ``a`` minus run ``b`` on ``task`` and its paired SE (``refs``: the
    teacher first, then ``aac``)."""
    from mtdp.evaluate.transfer import gain_capture_difference

    teacher = next(k for k in refs if k != "aac")
    return gain_capture_difference(a["tasks"][task], b["tasks"][task],
                                   refs[teacher]["tasks"][task], refs["aac"]["tasks"][task])


def _score_cell(res: dict, task: str) -> str:
    gc, se = res["gain_capture"][task]
    return f"{np.mean(res['tasks'][task]):.3f} · {gc:.2f} ± {se:.2f}"


def _set_section(name: str, runs: dict[str, dict], ts, tasks: list[str], refs: dict
                 ) -> list[str]:
    groups = list(ts.groups)
    out = ["", f"## `{name}`: " + ", ".join(f"`{k}`" for k in ts.protein), "",
           "Score · gain capture ± SE per task; UniRep-1900 R² (ridge, held-out pool) per "
           "group.", "",
           "| run | " + " | ".join(tasks) + " | " + " | ".join(f"R² {g}" for g in groups) + " |",
           "|---|" + "---:|" * (len(tasks) + len(groups))]
    for label, res in runs.items():
        out.append(f"| {label} | " + " | ".join(_score_cell(res, t) for t in tasks) + " | "
                   + " | ".join(f"{res['r2'][g]:.3f}" for g in groups) + " |")
    pairs = [(a, b) for a, b in PAIRS if a in runs and b in runs]
    if pairs:
        out += ["", "Paired gain-capture differences (± jackknife SE of the difference):", "",
                "| pair | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for a, b in pairs:
            cells = []
            for t in tasks:
                d, se = difference(runs[a], runs[b], refs, t)
                cells.append(f"{d:+.3f} ± {se:.3f}" + (" **" if abs(d) > 2 * se else ""))
            out.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    out += ["", "Selection rates per teacher and group (held-out pool proteins; rl: the final "
            "policy's probabilities):", "",
            "| run | " + " | ".join(f"{k} [{g}]" for k in ts.protein for g in groups) + " |",
            "|---|" + "---:|" * (len(ts.protein) * len(groups))]
    for label, res in runs.items():
        if label.startswith("rl") or label in ("oracle", "random"):
            r = res["rates"]
            out.append(f"| {label} | " + " | ".join(f"{r[k][g]:.2f}" for k in ts.protein
                                                   for g in groups) + " |")
    return out


def verdicts(results: dict, tasks: list[str]) -> list[str]:
    """The issue's questions answered per heterogeneous set from the paired differences."""
    refs, out = results["reference"], []
    for name in ("hetero-membrane", "hetero-kingdom"):
        runs = results.get(name, {})
        if "oracle" not in runs or "uniform" not in runs:
            continue
        for t in tasks:
            d, se = difference(runs["oracle"], runs["uniform"], refs, t)
            line = f"- `{name}` {t}: oracle − uniform {d:+.3f} ± {se:.3f}"
            line += " (> 2 SE)" if d > 2 * se else " (not > 2 SE)"
            for mode in ("rl+contrast", "rl"):
                if mode in runs:
                    a, sa = difference(runs[mode], runs["oracle"], refs, t)
                    b, sb = difference(runs[mode], runs["uniform"], refs, t)
                    line += (f"; {mode} − oracle {a:+.3f} ± {sa:.3f}, − uniform "
                             f"{b:+.3f} ± {sb:.3f}")
            out.append(line)
    return out


def write_report(cfg, results: dict[str, Any], sets: dict, tasks: list, seconds: float
                 ) -> Path:
    """Write the tables to ``cfg.results``; returns its path."""
    tnames = [t.name for t in tasks]
    refs = results["reference"]
    students = [r for k, v in results.items() if k != "reference" for r in v.values()]
    trained = sum(r.get("seconds", 0.0) for r in students)
    lines = ["# Selector study — tables", "",
             f"`python research/selector_study.py` (train {cfg.train} proteins incl. held-out "
             f"{cfg.heldout}, crop {cfg.crop}, {cfg.steps} steps × {cfg.batch_size}, seed "
             f"{cfg.seed}; tasks {', '.join(tnames)}: {cfg.task_proteins} proteins, "
             f"{cfg.folds} homology folds (eSOL: random folds, no partitions), linear probes, "
             f"students embed up to {cfg.task_max_len} residues, references full length). "
             f"{len(students)} students, {trained / 60:.1f} min of training + scoring summed; "
             f"this invocation {seconds / 60:.1f} min on {os.cpu_count()} CPUs.", "",
             "Answers (gain-capture differences, paired over folds):", ""]
    lines += verdicts(results, tnames) or ["- no heterogeneous set has both oracle and uniform"]
    lines += ["", "| reference | " + " | ".join(tnames) + " | UniRep R² |",
              "|---|" + "---:|" * (len(tnames) + 1)]
    floors = {**refs, "random-init student": results["random-init"]["random-init"]}
    for k, v in floors.items():
        lines.append(f"| {k} | " + " | ".join(f"{np.mean(v['tasks'][t]):.3f}" for t in tnames)
                     + f" | {v['r2']['all']:.3f} |")
    for name, ts in sets.items():
        if results.get(name):
            lines += _set_section(name, results[name], ts, tnames, refs)
    return write_text(Path(cfg.results), "\n".join(lines) + "\n")
