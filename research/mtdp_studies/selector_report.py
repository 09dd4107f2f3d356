"""The selector study's table (:mod:`.selector_study`): per teacher set every mode's scores,
paired differences against ``uniform`` and ``oracle``, selection rates per protein group, and
the default selector chosen on the pool's validation part."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mtdp.io import write_text
from .preset_report import format_paired

#: Paired comparisons shown per set: (a, b).
PAIRS = [("rl", "uniform"), ("rl", "oracle"), ("rl+contrast", "uniform"),
         ("rl+contrast", "oracle"), ("rl+contrast", "rl")]


def _row(label: str, res: dict[str, Any], tasks: list[str], groups: list[str]) -> str:
    cells = [f"{np.mean(res['tasks'][t]):.3f}" for t in tasks] + [f"{res['val']:.3f}"]
    cells += [f"{res.get('r2', {}).get(g, float('nan')):.3f}" for g in groups]
    return f"| {label} | " + " | ".join(cells) + " |"


def _set_section(name: str, runs: dict[str, dict], ts, tasks: list) -> list[str]:
    tnames = [t.name for t in tasks]
    groups = list(ts.groups)
    head = ["", f"## `{name}`: " + ", ".join(f"`{k}`" for k in ts.targets), "",
            "| run | " + " | ".join(f"{t} ({tk.primary_metric})" for t, tk in
                                   zip(tnames, tasks))
            + " | val | " + " | ".join(f"UniRep R² {g}" for g in groups) + " |",
            "|---|" + "---:|" * (len(tnames) + 1 + len(groups))]
    rows = [_row(label, res, tnames, groups) for label, res in runs.items()]
    pairs = [(a, b) for a, b in PAIRS if a in runs and b in runs]
    out = head + rows
    if pairs:
        out += ["", "Paired differences per fold (mean ± SE, folds won):", "",
                "| pair | " + " | ".join(tnames) + " | val |",
                "|---|" + "---|" * len(tnames) + "---:|"]
        for a, b in pairs:
            cells = [format_paired(np.subtract(runs[a]["tasks"][t], runs[b]["tasks"][t]))
                     for t in tnames]
            out.append(f"| {a} − {b} | " + " | ".join(cells)
                       + f" | {runs[a]['val'] - runs[b]['val']:+.3f} |")
    out += ["", "Selection rates (training proteins; rl: final policy) per teacher, by group:",
            "", "| run | " + " | ".join(f"{k} [{g}]" for k in ts.targets for g in groups) + " |",
            "|---|" + "---:|" * (len(ts.targets) * len(groups))]
    for label, res in runs.items():
        if label.startswith("rl") or label in ("oracle", "random"):
            r = res["rates"]
            out.append(f"| {label} | " + " | ".join(f"{r[k][g]:.2f}" for k in ts.targets
                                                   for g in groups) + " |")
    return out


def default_selector(results: dict[str, dict]) -> tuple[str, str]:
    """The mode with the best validation score on the ``real`` set, and the line saying so."""
    real = {k: v for k, v in results.get("real", {}).items()
            if k in ("rl", "uniform", "rl+contrast", "random")}
    if not real:
        return "", "the `real` set was not run: no default chosen"
    best = max(real, key=lambda k: real[k]["val"])
    ranked = ", ".join(f"{k} {v['val']:.3f}" for k, v in
                       sorted(real.items(), key=lambda kv: -kv[1]["val"]))
    return best, f"validation score on the `real` set (held-out pool part): {ranked}"


def write_report(cfg, results: dict[str, dict], sets: dict, tasks: list, seconds: float
                 ) -> Path:
    """Write ``selector_study.md`` under ``cfg.results``; returns its path."""
    tnames = [t.name for t in tasks]
    floors = {f"ref: {k}": v for k, v in results["reference"].items()}
    floors["ref: random-init student"] = results["random-init"]["random-init"]
    for set_runs in results.values():
        if "none" in set_runs:
            floors["ref: MLM-only student"] = set_runs["none"]
    best, line = default_selector(results)
    students = [r for k, v in results.items() if k != "reference" for r in v.values()]
    n_students = len(students)
    trained = sum(r.get("seconds", 0.0) for r in students)
    lines = ["# Teacher selection study", "",
             f"Command: `python research/selector_study.py` (pool {cfg.pool}, max_len "
             f"{cfg.max_len}, `{cfg.preset}` student, {cfg.epochs} epochs × batch "
             f"{cfg.batch_size}, seed {cfg.seed}; tasks {', '.join(tnames)}: {cfg.task_proteins}"
             f" proteins each, {cfg.folds} homology folds, linear probes). {n_students} students,"
             f" training + scoring {trained / 60:.1f} min summed over the runs that computed "
             f"them; this invocation {seconds / 60:.1f} min on {os.cpu_count()} CPUs (teacher "
             "embeddings of the pool and the references, ~5 min on first use, are cached).", "",
             "Every run: same student architecture, seed, data order and step count; only the "
             "teachers' selection differs. `val`: localization + membrane probes on the pool's "
             "held-out proteins (chooses the default). UniRep R²: UniRep-1900 recovered from "
             "the student's embedding of held-out pool proteins, per protein group.", "",
             f"**Default selector: `{best or 'n/a'}`** — {line}.", "",
             "| reference | " + " | ".join(tnames) + " | val | UniRep R² |",
             "|---|" + "---:|" * (len(tnames) + 2)]
    lines += [_row(k, v, tnames, ["all"]) for k, v in floors.items()]
    for name, ts in sets.items():
        if name in results:
            runs = {k: v for k, v in results[name].items() if k != "none"}
            lines += _set_section(name, runs, ts, tasks)
    out = Path(cfg.results)
    return write_text(out / "selector_study.md", "\n".join(lines) + "\n")
