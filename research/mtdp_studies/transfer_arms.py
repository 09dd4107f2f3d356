"""The de-risk study's pieces (see transfer_derisk.py): labels, in-process training at a wall
budget, scoring, the table."""
from __future__ import annotations

import json
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "runs" / "transfer"
EVAL_STORE = ROOT / "runs" / "embedding-store"   # where tune/benchmark.py keeps task vectors
TEACHER = "unirep1900"
CROP, WINDOW, SEED = 512, 8, 0
TASKS, TASK_PROTEINS, FOLDS = ("localization", "membrane"), 3000, 5
#: Training data of an arm (``--set data_variant=...``).
VARIANTS = ("crop", "trunc256", "trunc128", "multi", "multi-trunc256")

#: The new recipe's settings; an arm overrides some (``--set key=value``).
BASE = dict(preset="tiny", d_model=128, num_layers=4, num_heads=4, d_ff=512, embed_dim=128,
            dropout=0.0, kd_loss="mse", kd_input="clean", mlm_weight=0.0,
            residue_teachers=[TEACHER], residue_weight=1.0, residue_head="shared",
            pool_norm=True, lr=3e-3, warmup_ratio=0.05, schedule="cosine", batch_size=8,
            batch_tokens=4096, weight_decay=0.01, precision="fp32", max_len=1000, seed=0)
#: Today's loss (the preset's: cosine to the standardised vectors, MLM on the masked input
#: the heads also see, a separate per-residue head), on the same windows.
TODAY = dict(kd_loss="cosine", kd_input="masked", mlm_weight=0.1, residue_head="separate",
             pool_norm=False)


def dataset_dir(n: int, multi: bool = False) -> Path:
    """The labelled set: UniRep-1900 alone, or with UniRep-256 (``multi``)."""
    return WORK / (f"teachers-{n}-multi" if multi else f"teachers-{n}")


def label(n: int, multi: bool = False) -> None:
    """The first ``n`` pool proteins cropped to 512 and labelled by UniRep-1900 (and UniRep-256
    with ``multi``): h_avg and window means, through mtdp.precompute into the study's store."""
    from mtdp.distill.pool import write_pool
    from mtdp.precompute import PrecomputeConfig, run_precompute

    WORK.mkdir(parents=True, exist_ok=True)
    fasta, k, res = write_pool(n, SEED, WORK / f"pool-{n}.fasta")
    print(f"[derisk] pool: {k:,} proteins, {res:,} residues before cropping", flush=True)
    t0 = time.time()
    teachers = [TEACHER, "unirep256"] if multi else [TEACHER]
    man = run_precompute(PrecomputeConfig(
        inputs=[str(fasta)], teachers=teachers, per_residue=teachers,
        residue_window=WINDOW, max_len=CROP, length_rule="crop", store=str(WORK / "store"),
        output=str(dataset_dir(n, multi)), validation_fraction=0.05,
        track=False))
    took = time.time() - t0
    resid = man.extra.get("residues", 0)
    print(f"[derisk] labelled {man.rows:,} proteins, {resid:,} residues in {took:.0f} s "
          f"({resid / took:,.0f} residues/s end to end)", flush=True)


def _residue_arrays(col, dim: int) -> np.ndarray:
    """A ``list<fixed_size_list<float16>>`` column → object array of ``[n_i, dim]`` views."""
    col = col.combine_chunks()
    flat = col.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    off = col.offsets.to_numpy()
    out = np.empty(len(col), dtype=object)
    out[:] = [flat[off[i]:off[i + 1]] for i in range(len(col))]
    return out


def load_rows(n: int, variant: str = "crop", split: str | None = None):
    """The labelled set as in-memory columns (and its manifest). ``trunc256``: the proteins
    whose crop starts at residue 1, cut to their first 256 (windows and h_avg recomputed;
    ``trunc128``: 128);
    ``multi``: UniRep-256 beside UniRep-1900; ``multi-trunc256``: both."""
    if variant not in VARIANTS:
        raise ValueError(f"data_variant must be one of {VARIANTS}, not {variant!r}")
    rows, man = read_rows(dataset_dir(n, variant.startswith("multi")), split)
    if "trunc" in variant:
        rows = _truncated(rows, man.teachers, n, int(variant.rpartition("trunc")[2]))
    return rows, man


def read_rows(run: Path, split: str | None = None):
    """A labelled teacher dataset as in-memory columns (and its manifest): id, sequence,
    split, length, per teacher h_avg ``[N, d]`` and its window means (object array)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtdp.teacher_data import Manifest, data_files

    man = Manifest.load(run)
    table = pa.concat_tables([pq.read_table(f) for f in data_files(run)])
    if split:
        table = table.filter(pa.compute.equal(table["split"], split))
    rows = {c: np.asarray(table[c].to_pylist(), dtype=object) for c in ("id", "sequence",
                                                                         "split")}
    rows["length"] = np.asarray(table["length"].to_pylist())
    for t in man.teachers:
        rows[t.column] = table[t.column].combine_chunks().flatten().to_numpy(
            zero_copy_only=False).reshape(-1, t.dim)
        rows[t.residue_column] = _residue_arrays(table[t.residue_column], t.dim)
    return rows, man


def _truncated(rows: dict, teachers, n: int, cut: int) -> dict:
    """Rows of N-terminal crops only, cut to ``cut`` residues (``cut`` a multiple of w): each
    teacher's windows kept up to ``cut``, h_avg = (h0 + Σ states) / (L + 1) as UniRep defines
    it (h0: that UniRep's state after the start token)."""
    from mtdp.models.unirep import START_TOKEN, load_unirep
    from mtdp.sequences import read_fasta

    full = {r.id: r.sequence for r in read_fasta(WORK / f"pool-{n}.fasta")}
    h0 = {}
    for t in teachers:
        model = load_unirep(t.dim).model
        _, states = model(torch.tensor([[START_TOKEN]]), torch.tensor([0]), keep_states=True)
        h0[t.name] = states[0, 0].numpy().astype(np.float64)
    keep = [i for i, (a, s) in enumerate(zip(rows["id"], rows["sequence"]))
            if full[a].startswith(s)]
    out = {k: v[keep] for k, v in rows.items()}
    for j in range(len(keep)):
        if int(out["length"][j]) <= cut:
            continue
        out["sequence"][j] = out["sequence"][j][:cut]
        out["length"][j] = cut
        for t in teachers:
            win = out[t.residue_column][j][:cut // WINDOW].astype(np.float64)
            out[t.residue_column][j] = win.astype(np.float16)
            out[t.column][j] = ((h0[t.name] + WINDOW * win.sum(0)) / (cut + 1)).astype(
                np.float16)
    return out


def arm_config(sets: list[str]) -> dict[str, Any]:
    """:data:`BASE` with ``key=value`` overrides (typed like the DistillConfig field)."""
    from mtdp.config import parse_value
    from mtdp.distill import DistillConfig

    types = typing.get_type_hints(DistillConfig)
    cfg = dict(BASE)
    for item in sets:
        key, _, text = item.partition("=")
        if key == "data_variant":
            cfg[key] = text
            continue
        if key == "loss" and text == "today":
            cfg.update(TODAY)
            continue
        if key not in types:
            raise SystemExit(f"unknown field {key!r}")
        cfg[key] = parse_value(types[key], text)
    return cfg


def first_train(rows: dict, n: int) -> dict:
    """The rows with only the first ``n`` training proteins (validation kept): a smaller
    labelled set, as a shorter labelling run would give."""
    train = np.flatnonzero(rows["split"] == "train")
    keep = np.sort(np.concatenate([train[:n], np.flatnonzero(rows["split"] != "train")]))
    return _take(rows, keep)


def _take(rows: dict, idx: np.ndarray) -> dict:
    return {k: v[idx] for k, v in rows.items()}


def train_arm(out: Path, cfg: dict, rows: dict, man, budget_s: float) -> dict:
    """Train one arm for ``budget_s`` seconds of wall time (the schedule's length set from the
    pace of its first steps); saves the student and the run's figures."""
    from mtdp.distill import DistillConfig
    from mtdp.distill.batches import TeacherStats, make_batch
    from mtdp.distill.core import lr_lambda, new_distiller

    torch.set_num_threads(2)
    dcfg = DistillConfig(data="-", mlflow=False, **cfg)
    stats = TeacherStats.from_manifest(man, dcfg.teachers or None, dcfg.residue_teachers)
    dist = new_distiller(dcfg, stats, man.max_len, total_steps=10 ** 7)
    train = np.flatnonzero(rows["split"] == "train")
    rng = np.random.default_rng(dcfg.seed)
    log, tokens, total, epoch = [], 0, None, 0
    order, pos = rng.permutation(train), 0
    t0 = time.perf_counter()
    print(f"[derisk] {out.name}: {dist.student.num_parameters():,} parameters "
          f"({dist.student.num_parameters(encoder_only=True):,} encoder), "
          f"{len(train):,} train proteins, {budget_s / 60:.0f} min", flush=True)
    while True:
        if pos + dcfg.batch_size > len(order):
            order, pos, epoch = rng.permutation(train), 0, epoch + 1
        idx = order[pos:pos + dcfg.batch_size]
        pos += dcfg.batch_size
        batch = make_batch(_take(rows, idx), stats, mlm_prob=dcfg.mlm_prob, seed=epoch)
        m = dist.train_step(batch)
        tokens += int(batch["attention_mask"].sum())
        el = time.perf_counter() - t0
        if dist.step in (10, 40):  # the schedule's length from the pace so far
            total = max(dist.step + 1, int(budget_s / (el / dist.step)))
            dist.scheduler.lr_lambdas[0] = lr_lambda(total, dcfg.warmup_ratio, dcfg.schedule)
        if dist.step % 50 == 0:
            log.append({"step": dist.step, "s": round(el, 1), "loss": round(m["train/loss"], 4),
                        "lr": m["train/lr"], "tokens_per_s": round(tokens / el)})
            print(f"[derisk] {out.name} step {dist.step}/{total} {el:.0f}s loss "
                  f"{m['train/loss']:.4f} {tokens / el:,.0f} tok/s", flush=True)
        if el >= budget_s or (total and dist.step >= total):
            break
    out.mkdir(parents=True, exist_ok=True)
    dist.student.save(out / "student")
    fig = {"config": cfg, "steps": dist.step, "seconds": round(el, 1), "tokens": tokens,
           "tokens_per_s": round(tokens / el), "epochs": round(epoch + pos / len(train), 2),
           "parameters": dist.student.num_parameters(),
           "encoder_parameters": dist.student.num_parameters(encoder_only=True),
           "final_loss": m["train/loss"], "log": log}
    (out / "train.json").write_text(json.dumps(fig, indent=1))
    return fig


def _window_predictions(student, hidden, rmask, window: int):
    """The student's per-window predictions (per-residue standardised units) and mask."""
    from mtdp.residue_windows import pool_windows

    pooled, wmask = pool_windows(hidden, rmask, window)
    if TEACHER in student.residue_heads:
        return student.residue_heads[TEACHER](pooled), wmask
    return student.teacher_heads[TEACHER](student.project(pooled)), wmask


def _teacher_vectors(student, embedding: torch.Tensor, entry) -> np.ndarray:
    """The student's own h_avg predictions in teacher units (older students: the head's
    output read with the dataset's per-protein statistics)."""
    got = student.teacher_vectors(embedding).get(TEACHER)
    if got is not None:
        return got.numpy()
    out = student.teacher_heads[TEACHER](embedding).numpy()
    return out * np.asarray(entry.std) + np.asarray(entry.mean)


@torch.no_grad()
def heldout_r2(student, n: int) -> dict[str, float]:
    """R² of the student's own heads (no refit) on the labelled set's validation proteins:
    window means (standardised with the train statistics) and h_avg (teacher units)."""
    from mtdp.evaluate.transfer import r2, r2_of_predictions
    from mtdp.distill.batches import TeacherStats, make_batch
    from mtdp.tokenizer import residue_mask

    rows, man = load_rows(n, split="validation")
    stats = TeacherStats.from_manifest(man, [TEACHER], [TEACHER])
    entry = man.teacher(TEACHER)
    wp, wt, pp = [], [], []
    for i in range(0, len(rows["id"]), 32):
        b = make_batch(_take(rows, np.arange(i, min(i + 32, len(rows["id"])))), stats,
                       mlm_prob=0.15, seed=0)
        out = student(b["input_ids"], b["attention_mask"])
        pred, wmask = _window_predictions(student, out["hidden"],
                                          residue_mask(b["input_ids"]),
                                          stats.residues[TEACHER].window)
        wp.append(pred[wmask].numpy())
        wt.append(b["residue_targets"][TEACHER][wmask].numpy())
        pp.append(_teacher_vectors(student, out["embedding"], entry))
    return {"window_r2_head": r2(np.concatenate(wt), np.concatenate(wp)),
            "pooled_r2_head": r2_of_predictions(rows[entry.column].astype(np.float64),
                                                np.concatenate(pp)),
            "val_proteins": int(len(rows["id"]))}


def _task_vectors(task, student_emb) -> dict[str, np.ndarray]:
    from mtdp.evaluate.cache import cached_embeddings
    from mtdp.embed import embed_sequences
    from mtdp.models.registry import load_embedder

    out = {}
    for spec in (TEACHER, "aac"):
        out[spec] = cached_embeddings(load_embedder(spec, device="cpu"), task, EVAL_STORE)[0]
    out["student"] = embed_sequences(student_emb, task.sequences)
    return out


def evaluate_arm(out: Path, n: int) -> dict[str, Any]:
    """Held-out head R², and on the tasks (3,000 proteins, homology folds, linear probes):
    scores, ratio and gain capture over composition, ridge and head R² at full length."""
    from mtdp.evaluate.probes import task_folds
    from mtdp.evaluate.tasks import load_task
    from mtdp.evaluate.transfer import gain_capture, r2_of_predictions, ratio, ridge_r2
    from mtdp_studies.selector_eval import linear_fold_scores
    from mtdp.models.student import StudentEmbedder, load_student
    from mtdp.teacher_data import Manifest

    torch.set_num_threads(2)
    student = load_student(out / "student")
    res: dict[str, Any] = heldout_r2(student, n)
    emb = StudentEmbedder(student)
    t = Manifest.load(WORK / f"teachers-{n}").teacher(TEACHER)
    for name in TASKS:
        task = load_task(name, max_proteins=TASK_PROTEINS, seed=42, min_class_count=FOLDS)
        folds = task_folds(task, "homology", FOLDS, 42)[0]
        vec = _task_vectors(task, emb)
        sc = {k: linear_fold_scores(v, task, folds) for k, v in vec.items()}
        gc, se = gain_capture(sc["student"], sc[TEACHER], sc["aac"])
        res[name] = {"student": float(np.mean(sc["student"])),
                     "teacher": float(np.mean(sc[TEACHER])), "aac": float(np.mean(sc["aac"])),
                     "ratio": ratio(sc["student"], sc[TEACHER]), "gain_capture": gc,
                     "gain_capture_se": se,
                     "folds": {k: [float(x) for x in v] for k, v in sc.items()}}
        if name == TASKS[0]:
            y = vec[TEACHER]
            with torch.no_grad():
                head = _teacher_vectors(student, torch.from_numpy(vec["student"]), t)
            res["ridge_r2"] = {"student": ridge_r2(vec["student"], y),
                               "teacher": ridge_r2(y, y), "aac": ridge_r2(vec["aac"], y)}
            res["full_length_head_r2"] = r2_of_predictions(y, head)
            res["r2_proteins"] = len(y)
        print(f"[derisk] {out.name} {name}: {res[name]}", flush=True)
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return res


def compare_arms(a: str, b: str) -> None:
    """Two arms on the same folds: per task the gain-capture difference a − b ± its paired
    jackknife SE (from the per-fold scores their ``result.json`` keeps)."""
    from mtdp.evaluate.transfer import gain_capture_difference

    res = {x: json.loads((WORK / "arms" / x / "result.json").read_text()) for x in (a, b)}
    for name in TASKS:
        fa, fb = (res[x][name].get("folds") for x in (a, b))
        if fa is None or fb is None:
            raise SystemExit(f"{name}: no per-fold scores kept; rerun the arm with --eval-only")
        d, se = gain_capture_difference(fa["student"], fb["student"], fa[TEACHER], fa["aac"])
        print(f"[derisk] {name}: gain capture {a} − {b} = {d:+.2f} ± {se:.2f} "
              f"({res[a][name]['gain_capture']:.2f} vs {res[b][name]['gain_capture']:.2f})")


def measure_speed() -> None:
    """fp32 against bf16 on this CPU, side by side in one run: GEMM, UniRep-1900 labelling
    (per-residue states kept, as for the labels), one training step of the arms' student."""
    from mtdp.distill import DistillConfig
    from mtdp.distill.batches import TeacherStats
    from mtdp.distill.core import new_distiller
    from mtdp.models.unirep import load_unirep
    from mtdp.precision import cpu_has_bf16

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    print(f"[speed] native bf16 matrix instructions: {cpu_has_bf16()}", flush=True)

    def rate(fn, min_s: float = 3.0, max_calls: int = 10 ** 6) -> float:
        fn()
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < min_s and k < max_calls:
            fn()
            k += 1
        return k / (time.perf_counter() - t0)

    for dt in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 1024, dtype=dt), torch.randn(1024, 1024, dtype=dt)
        print(f"[speed] GEMM 1024² {dt}: {2 * 1024 ** 3 * rate(lambda: a @ b) / 1e9:.1f} "
              "GFLOP/s", flush=True)
    teacher = load_unirep(1900)
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 64)) for _ in range(16)]
    ref = None
    for prec in ("fp32", "bf16"):
        teacher.model.set_precision(prec)
        emb = teacher.embed_batch(seqs, per_residue=True)[0].numpy()
        ref = emb if ref is None else ref
        cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
        r = rate(lambda: teacher.embed_batch(seqs, per_residue=True), 5.0, 3) * 16 * 64
        print(f"[speed] UniRep-1900 16 x 64 aa, {prec}: {r:,.0f} residues/s (cosine to fp32 "
              f"min {cos.min():.5f})", flush=True)
    rows, man = load_rows(10000) if (WORK / "teachers-10000").is_dir() else (None, None)
    if rows is None:
        return
    from mtdp.distill.batches import make_batch

    stats = TeacherStats.from_manifest(man, None, [TEACHER])
    batch = make_batch(_take(rows, np.arange(8)), stats, mlm_prob=0.15, seed=0)
    tokens = int(batch["attention_mask"].sum())
    for prec in ("fp32", "bf16"):
        cfg = {**BASE, "precision": prec}
        dist = new_distiller(DistillConfig(data="-", mlflow=False, **cfg), stats, man.max_len,
                             total_steps=1000)
        r = rate(lambda: dist.train_step(batch), 10.0, 2)
        print(f"[speed] student training step (8 proteins, {tokens:,} tokens), {prec}: "
              f"{r * tokens:,.0f} tokens/s", flush=True)


def print_table() -> None:
    """Every scored arm as a Markdown table."""
    rows = []
    for d in sorted((WORK / "arms").glob("*/result.json")):
        r, tr = json.loads(d.read_text()), json.loads((d.parent / "train.json").read_text())
        loc, mem = r.get("localization", {}), r.get("membrane", {})
        rows.append(f"| {d.parent.name} | {tr['encoder_parameters'] / 1e6:.2f} M | "
                    f"{tr['seconds'] / 60:.0f} | {tr['tokens'] / 1e6:.1f} M | "
                    f"{tr['tokens_per_s']:,} | {r['window_r2_head']:.3f} | "
                    f"{r['pooled_r2_head']:.3f} | {r.get('full_length_head_r2', float('nan')):.3f} | "
                    f"{r['ridge_r2']['student']:.3f} | "
                    f"{loc['gain_capture']:.2f} ± {loc['gain_capture_se']:.2f} "
                    f"({loc['ratio']:.3f}) | "
                    f"{mem['gain_capture']:.2f} ± {mem['gain_capture_se']:.2f} "
                    f"({mem['ratio']:.3f}) |")
    print("| arm | encoder | min | tokens | tokens/s | window R² (head, held out) | pooled R² "
          "(head, crops) | h_avg R² (head, full length) | ridge R² | localization GC (ratio) "
          "| membrane GC (ratio) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
