"""Correctness of mtdp's GPU code paths (CUDA autocast, SDPA with T5's bias, fp16 teachers,
UniRep's recurrence, training) against float32 references (``benchmarks/gpu_check.py``). CI has no GPU, so this is
the check to run on one.

Each line compares a GPU result with a float32 reference and prints the relative error
‖gpu − ref‖ / ‖ref‖ over real positions (padding excluded) with its bound; bf16/fp16 land
around 1e-3–1e-2, float32 far under 1e-4. Inputs are real DeepLoc proteins of mixed lengths
(so batches are padded) plus one all-equal-length batch (the mask-free path).
"""
from __future__ import annotations

import copy
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtdp.distill import DistillConfig
from mtdp.distill.batches import TeacherStats, make_batch
from mtdp.distill.core import new_distiller
from mtdp.embed import embed_file, embed_sequences
from mtdp.models.student import StudentConfig, StudentEmbedder, StudentModel, load_student
from mtdp.sequences import prepare, read_fasta
from mtdp.teacher_data import Manifest, TeacherEntry, residue_column, teacher_column

AA = "ACDEFGHIKLMNPQRSTVWY"
RESULTS: list[tuple[str, float, float, bool]] = []


def rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ in float64 (NaN anywhere gives NaN, which fails every bound)."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(name: str, err: float, bound: float) -> None:
    ok = bool(err < bound)  # NaN compares False
    RESULTS.append((name, err, bound, ok))
    print(f"  {'ok  ' if ok else 'FAIL'} {name:<58} {err:9.2e}  (< {bound:.0e})", flush=True)


def proteins(fasta: Path, n: int, seed: int = 0) -> list[str]:
    recs = read_fasta(fasta)
    random.Random(seed).shuffle(recs)
    return [prepare(r.sequence) for r in recs[:n]]


def student_checks(dev: torch.device, seqs: list[str]) -> None:
    """Fused inference path (autocast bf16 on CUDA) vs the stock transformers forward in fp32."""
    print("student (paper config, random init):", flush=True)
    torch.manual_seed(0)
    model = StudentModel(StudentConfig.preset("paper", dropout=0.0)).eval().to(dev)
    emb = StudentEmbedder(model, pretrained=False)
    fixed = ["".join(random.Random(i).choice(AA) for _ in range(1000)) for i in range(4)]
    for label, batch in (("mixed lengths (padded)", seqs), ("4 x 1000 aa (no padding)", fixed)):
        ids, mask = emb.tokenizer.batch_encode(batch)
        ids, mask = ids.to(dev), mask.to(dev)
        with torch.inference_mode():
            model.fast_inference = False
            ref = model.encode(ids, mask).float()
            model.fast_inference = True
            fast32 = model.encode(ids, mask).float()
            ref_emb = model.proj(_pool(ref, ids))
            ref_res = torch.cat([model.proj(ref[i, :len(s)]).cpu() for i, s in enumerate(batch)])
        real = mask.bool()
        check(f"fused fp32 hidden vs stock fp32, {label}", rel(fast32[real].cpu(),
                                                              ref[real].cpu()), 1e-4)
        e, res = emb.embed_batch(batch, per_residue=True)
        check(f"embed_batch ({'bf16' if dev.type == 'cuda' else 'fp32'}) vs stock fp32, {label}",
              rel(e, ref_emb.cpu()), 2e-2 if dev.type == "cuda" else 1e-4)
        check(f"per-residue vs stock fp32, {label}", rel(torch.cat(res), ref_res),
              2e-2 if dev.type == "cuda" else 1e-4)
    # The engine: token-budget batches in any order give the same rows as one big batch.
    one = embed_sequences(emb, seqs, batch_tokens=10 ** 9)
    small = embed_sequences(emb, seqs, batch_tokens=2048)
    check("embed_sequences: budget 2048 vs one batch", rel(small, one),
          2e-2 if dev.type == "cuda" else 1e-5)


def _pool(hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    from mtdp.models.pooling import masked_mean
    from mtdp.tokenizer import residue_mask

    return masked_mean(hidden, residue_mask(ids))


def teacher_checks(dev: torch.device, seqs: list[str]) -> None:
    """fp16 teachers on GPU vs the same weights in fp32 on CPU."""
    from mtdp.models.teachers import tiny_random_esm2, tiny_random_t5

    print("teachers (tiny random, real classes; fp16 on GPU):", flush=True)
    for make in (tiny_random_esm2, tiny_random_t5):
        cpu = make()
        ref = embed_sequences(cpu, seqs)
        gpu = copy.deepcopy(cpu).to(dev)
        out = embed_sequences(gpu, seqs)
        check(f"{cpu.name} {dev.type} vs cpu fp32", rel(out, ref),
              3e-2 if dev.type == "cuda" else 1e-5)


def unirep_checks(dev: torch.device, seqs: list[str]) -> None:
    """UniRep-1900's recurrence on ``dev`` (batched over proteins, fp32 and bf16 recurrent
    GEMMs) vs the CPU path in fp32; skipped, saying why, when the weights are not available."""
    from mtdp.models.unirep import load_unirep

    try:
        cpu = load_unirep(1900)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"unirep: skipped ({exc})", flush=True)
        return
    print("unirep (real UniRep-1900 weights):", flush=True)
    ref = embed_sequences(cpu, seqs)
    gpu = copy.deepcopy(cpu).to(dev)
    check(f"UniRep-1900 fp32 {dev.type} vs cpu fp32", rel(embed_sequences(gpu, seqs), ref),
          1e-3 if dev.type == "cuda" else 1e-6)
    gpu.model.set_precision("bf16")
    check(f"UniRep-1900 bf16 recurrent GEMMs {dev.type} vs cpu fp32",
          rel(embed_sequences(gpu, seqs), ref), 2e-2)


def _synthetic_teachers(seqs: list[str], rng: np.random.Generator):
    """An informative teacher (a fixed map of composition; per-residue: a vector per amino
    acid) and a noise teacher, as a manifest + rows (one ``[L, 32]`` array per protein for the
    per-residue column, as Ray Data hands them over)."""
    comp = np.array([[s.count(a) / len(s) for a in AA] for s in seqs], dtype=np.float32)
    comp = (comp - comp.mean(0)) / comp.std(0).clip(1e-6)
    feats = {"informative": comp @ rng.normal(size=(20, 32)).astype(np.float32),
             "noise": rng.normal(size=(len(seqs), 32)).astype(np.float32)}
    table = rng.normal(size=(len(AA) + 1, 32)).astype(np.float32)
    res = [table[[AA.find(c) for c in s]] for s in seqs]  # find: -1 (last row) for X
    flat = np.concatenate(res)
    man = Manifest(teachers=[TeacherEntry(n, 32, "synthetic", mean=x.mean(0).tolist(),
                                          std=x.std(0).tolist()) for n, x in feats.items()],
                   max_len=256, rows=len(seqs))
    inf = man.teacher("informative")
    inf.residue_column = residue_column("informative")
    inf.residue_mean, inf.residue_std = flat.mean(0).tolist(), flat.std(0).tolist()
    rows = {"id": np.array([f"p{i}" for i in range(len(seqs))]), "sequence": np.array(seqs),
            **{teacher_column(n): x for n, x in feats.items()},
            inf.residue_column: np.empty(len(res), dtype=object)}
    for i, r in enumerate(res):
        rows[inf.residue_column][i] = r
    return man, rows


def training_check(dev: torch.device, seqs: list[str], steps: int) -> None:
    """Distiller steps (autocast bf16, RL selector, per-residue targets for one teacher) on the
    device: finite, losses fall, a checkpoint resumes, and the trained student saves, reloads
    and embeds the same on CPU."""
    print(f"distillation (tiny student, RL selector, {steps} steps):", flush=True)
    seqs = [s[:256] for s in seqs]  # the check is about the code path, not long proteins
    rng = np.random.default_rng(0)
    man, rows = _synthetic_teachers(seqs, rng)
    # As mtdp.distill's Ray Train loop sets a rank up: statistics and selector on the device.
    stats = TeacherStats.from_manifest(man, None, ["informative"]).to(dev)
    cfg = DistillConfig(data="-", selector="rl", batch_size=32, lr=3e-3, warmup_ratio=0.05,
                        selector_warmup_steps=5, dropout=0.0, preset="tiny")
    d = new_distiller(cfg, stats, 256, steps, device=dev)
    take = lambda idx: {k: v[idx] for k, v in rows.items()}  # noqa: E731
    d.reward_batch = make_batch(take(np.arange(16)), stats, mlm_prob=0.15, seed=7, device=dev)
    val = [make_batch(take(np.arange(16, 48)), stats, mlm_prob=0.15, seed=1, device=dev)]

    def per_residue() -> float:  # the per-residue part of kd_informative on held-out proteins
        d.cfg.residue_weight = 0.0
        without = d.evaluate(val)["eval/kd_informative"]
        d.cfg.residue_weight = 1.0
        return d.evaluate(val)["eval/kd_informative"] - without

    res_before, before = per_residue(), d.evaluate(val)
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        idx = rng.choice(np.arange(48, len(seqs)), 32, replace=False)
        m = d.train_step(make_batch(take(idx), stats, mlm_prob=0.15, seed=step, device=dev))
        losses.append(m["train/loss"])
    secs = time.perf_counter() - t0
    after, res_after = d.evaluate(val), per_residue()
    finite = all(np.isfinite(losses)) and all(np.isfinite(list(after.values())))
    check("training losses finite (1 = not finite)", 0.0 if finite else 1.0, 0.5)
    check("held-out KD(informative) after / before", after["eval/kd_informative"]
          / before["eval/kd_informative"], 0.9)
    check("held-out per-residue loss after / before", res_after / res_before, 0.8)
    print(f"    {steps} steps in {secs:.1f} s; eval kd_informative "
          f"{before['eval/kd_informative']:.3f} -> {after['eval/kd_informative']:.3f}, "
          f"kd_noise {before['eval/kd_noise']:.3f} -> {after['eval/kd_noise']:.3f}; "
          f"per-residue {res_before:.3f} -> {res_after:.3f}; "
          f"selector rates {d.selector.rates()}", flush=True)
    _resume_and_files(dev, d, cfg, stats, val, seqs, steps)


def _resume_and_files(dev, d, cfg, stats, val, seqs: list[str], steps: int) -> None:
    """Resume as the Ray loop does (checkpoint loaded with ``map_location=<device>``,
    ``weights_only=True``), then save / reload / embed the trained student."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(d.state(epoch=0, batch_in_epoch=0), Path(tmp) / "state.pt")
        twin = new_distiller(cfg, stats, 256, steps, device=dev)
        twin.load_state(torch.load(Path(tmp) / "state.pt", map_location=dev,
                                   weights_only=True))
        twin.reward_batch = d.reward_batch
        check("resumed distiller: held-out loss vs original", abs(
            twin.evaluate(val)["eval/total"] - d.evaluate(val)["eval/total"]), 1e-5)
        student = d.student.eval()
        student.save(tmp)
        on_dev = embed_sequences(StudentEmbedder(student), seqs[:32])
        back = embed_sequences(StudentEmbedder(load_student(tmp)), seqs[:32])
        check(f"trained student: {dev.type} embed vs reloaded on cpu fp32", rel(on_dev, back),
              2e-2 if dev.type == "cuda" else 1e-5)
        # The file path: embed_file on the device writes the rows embed_sequences gives.
        fasta = Path(tmp) / "in.fasta"
        fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(seqs[:32])))
        import pyarrow.parquet as pq

        embed_file(StudentEmbedder(student), fasta, Path(tmp) / "out.parquet", progress=False)
        col = np.stack(pq.read_table(Path(tmp) / "out.parquet")["embedding"].to_numpy(
            zero_copy_only=False))
        check("embed_file parquet rows vs embed_sequences", rel(col, on_dev),
              2e-2 if dev.type == "cuda" else 1e-6)


def run_checks(dev: torch.device, fasta: Path, n: int, steps: int) -> int:
    """Every check on ``dev``; prints each and a summary line; returns 1 if any failed."""
    RESULTS.clear()
    if dev.type == "cuda":
        # fp32 references must be fp32, not TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}", flush=True)
    import transformers

    print(f"transformers {transformers.__version__}", flush=True)
    seqs = proteins(fasta, n)
    print(f"{len(seqs)} DeepLoc proteins, {min(map(len, seqs))}-{max(map(len, seqs))} aa",
          flush=True)
    student_checks(dev, seqs[:12])
    teacher_checks(dev, seqs[:24])
    unirep_checks(dev, seqs[:16])
    training_check(dev, seqs, steps)
    failed = [r for r in RESULTS if not r[3]]
    print(f"\n{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed on {dev}")
    return 1 if failed else 0
