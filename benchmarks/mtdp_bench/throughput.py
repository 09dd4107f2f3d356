"""The throughput experiment: per-protein embedding speed of the student against teacher-sized
models, in one process, on the same inputs, through the same batching code
(:func:`mtdp.embed.embed_sequences`), with the machine's GEMM rate measured at the start and
the end (``benchmarks/throughput.py`` prints it).

* ``student``        the paper student (6-layer T5, d_model 512) with mtdp's fused inference path;
* ``student-stock``  the same weights through the stock ``transformers`` forward (reference);
* ``esm2_650m``      fair-esm ``ESM2`` with ESM-2 650M's architecture (33 layers, 1280-d, 20
                     heads), random weights, wrapped in :class:`mtdp.models.teachers.ESM2Teacher`;
* ``prott5_xl``      ``transformers`` ``T5EncoderModel`` with ProtT5-XL-U50's encoder
                     architecture (24 layers, d_model 1024, d_ff 16384, 32 heads × 128), random
                     weights, wrapped in :class:`mtdp.models.teachers.T5Teacher`;
* ``protbert_bfd``   ``transformers`` ``BertModel`` with ProtBert-BFD's architecture (30 layers,
                     1024-d, 16 heads, 4096 feed-forward), random weights, wrapped in
                     :class:`mtdp.models.protbert.BertTeacher`.

Teachers run as users run them (stock modules, default attention). Timing does not depend on
weight values, so random weights give honest speed ratios without downloading checkpoints.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtdp.config import Config, option
from mtdp.embed import default_batch_tokens, embed_sequences
from mtdp.io import data_dir
from mtdp.models import kernels
from mtdp.models.base import Embedder
from mtdp.models.student import StudentConfig, StudentEmbedder, StudentModel
from mtdp.models.teachers import ESM2_MODELS, ESM2Teacher, T5Teacher
from .perf import (fixed_set, gemm_rates, gemm_size, physical_cores, real_sets, time_embed)

MODELS = ("student", "student-stock", "esm2_650m", "prott5_xl", "protbert_bfd")
LABELS = {"student": "student (mtdp fused)", "student-stock": "student (stock T5)",
          "esm2_650m": "ESM-2 650M (stock)", "prott5_xl": "ProtT5-XL enc (stock)",
          "protbert_bfd": "ProtBert-BFD (stock)"}


def build_student(fast: bool, pooling: str = "masked", name: str | None = None
                  ) -> StudentEmbedder:
    """The paper student (random init: speed does not depend on weights); ``pooling=
    "reference"`` is the released MTDP model's form (stock T5, 1,001-token padding)."""
    torch.manual_seed(0)
    model = StudentModel(StudentConfig.preset("paper", pooling=pooling))
    model.fast_inference = fast
    return StudentEmbedder(model, name=name or ("student" if fast else "student-stock"),
                           source="random-init", pretrained=False)


def build_esm2(hub_name: str = "esm2_t33_650M_UR50D", name: str = "esm2_650m-random"
               ) -> ESM2Teacher:
    """fair-esm ESM2 with the architecture of ``hub_name`` (an ESM-2 size), random weights."""
    import esm
    from esm.model.esm2 import ESM2

    layers, dim, heads = ESM2_MODELS[hub_name]
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    torch.manual_seed(0)
    model = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet=alphabet)
    return ESM2Teacher(model, alphabet, name=name, source="random-init", pretrained=False)


def build_prott5_xl() -> T5Teacher:
    """transformers T5EncoderModel with ProtT5-XL-U50's encoder architecture, random weights."""
    from transformers import T5Config, T5EncoderModel

    # Rostlab/prot_t5_xl_uniref50 config.json: t5-v1.0-style (ReLU, not gated) 3B layout.
    cfg = T5Config(vocab_size=128, d_model=1024, d_kv=128, d_ff=16384, num_layers=24,
                   num_heads=32, feed_forward_proj="relu", dropout_rate=0.0, use_cache=False,
                   is_encoder_decoder=False, relative_attention_num_buckets=32)
    torch.manual_seed(0)
    model = T5EncoderModel(cfg)
    return T5Teacher(model, name="prott5_xl-random", source="random-init", pretrained=False)


def build_protbert_bfd() -> Embedder:
    """transformers BertModel with Rostlab/prot_bert_bfd's architecture, random weights."""
    from transformers import BertConfig, BertModel

    from mtdp.models.protbert import VOCAB, BertTeacher

    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=1024, num_hidden_layers=30,
                     num_attention_heads=16, intermediate_size=4096,
                     max_position_embeddings=40000, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return BertTeacher(BertModel(cfg, add_pooling_layer=False), name="protbert_bfd-random",
                       source="random-init", pretrained=False)


def build(name: str) -> Embedder:
    return {"student": lambda: build_student(True), "student-stock": lambda: build_student(False),
            "esm2_650m": build_esm2, "prott5_xl": build_prott5_xl,
            "protbert_bfd": build_protbert_bfd}[name]()


@dataclass
class ThroughputConfig(Config):
    """The run's inputs and repeats (``benchmarks/throughput.py`` flags)."""

    models: list[str] = option(factory=lambda: list(MODELS), help="models to time")
    device: str = option("auto", help="cpu, cuda or auto")
    threads: int | None = option(None, ge=1, help="torch CPU threads")
    fixed_len: int = option(1000, ge=1, help="residues per fixed-length protein")
    student_fixed: int = option(8, ge=0, help="fixed-length proteins, student")
    teacher_fixed: int = option(4, ge=0, help="fixed-length proteins, teachers")
    student_real: int = option(64, ge=1, help="real proteins, student")
    teacher_real: int = option(2, ge=0, help="real proteins, teachers")
    repeats: int = option(3, ge=1, help="timed repeats per student run")
    teacher_repeats: int = option(1, ge=1, help="timed repeats per teacher run")
    batch_tokens: int | None = option(None, ge=1, help="token budget per batch")
    fasta: str | None = option(None, help="real proteins (FASTA)")
    seed: int = option(0, ge=0, help="seed of the inputs")


@dataclass
class _Run:
    """One run's state: the inputs, the built models and the timing rows."""

    cfg: ThroughputConfig
    device: torch.device
    fixed_s: list[str]
    fixed_t: list[str]
    real_s: list[str]
    real_t: list[str]
    budget: int
    students: list[str]
    teachers: list[str]
    label_fixed: str
    rows: dict = field(default_factory=dict)
    built: dict = field(default_factory=dict)
    build_s: dict = field(default_factory=dict)

    def time(self, name: str, label: str, seqs: list[str], reps: int, warmup: bool) -> None:
        time_embed(self.built[name], name, label, seqs, reps, self.budget, self.rows,
                   warmup=warmup)

    def student_runs(self, reps: int, first: bool) -> None:
        """The fused student's ratio inputs are re-timed after each teacher, so machine noise
        hits every model alike; the long 'real' set and the stock reference run once."""
        for name in self.students:
            if name != "student" and not first:
                continue
            if self.fixed_s[:self.cfg.student_fixed]:
                self.time(name, self.label_fixed, self.fixed_s[:self.cfg.student_fixed], reps,
                          True)
            if self.real_s and first:
                self.time(name, "real", self.real_s, reps, True)
            if self.real_t and self.teachers:
                self.time(name, "real (teachers' sample)", self.real_t, reps, True)

    def build(self, name: str) -> None:
        t0 = time.perf_counter()
        self.built[name] = build(name).to(self.device)
        warm = fixed_set(2, 300, 1) if name.startswith("student") else fixed_set(1, 50, 1)
        embed_sequences(self.built[name], warm, batch_tokens=self.budget)  # warm-up
        self.build_s[name] = time.perf_counter() - t0


def _setup(cfg: ThroughputConfig) -> _Run:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if cfg.device == "auto" else cfg.device)
    torch.set_num_threads(cfg.threads or physical_cores())
    fasta = Path(cfg.fasta) if cfg.fasta else data_dir() / "deeploc1" / "deeploc_test_set.fasta"
    teachers = [m for m in cfg.models if m in ("esm2_650m", "prott5_xl")]
    students = [m for m in cfg.models if m.startswith("student")]
    n_tfix = cfg.teacher_fixed if teachers else 0
    n_treal = cfg.teacher_real if teachers else 0
    fixed_s = fixed_set(max(cfg.student_fixed, n_tfix), cfg.fixed_len, cfg.seed)
    real_s, real_t = real_sets(fasta, cfg.student_real, n_treal, cfg.seed)
    return _Run(cfg, device, fixed_s, fixed_s[:n_tfix], real_s[:cfg.student_real], real_t,
                cfg.batch_tokens or default_batch_tokens(device), students, teachers,
                f"{cfg.fixed_len} aa")


def _preamble(run: _Run) -> dict[str, float]:
    """Print the set-up (device, threads, kernels, inputs, GEMM rate); returns the GEMM rates."""
    dev = run.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device {dev} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(of {os.cpu_count()} logical CPUs), "
          f"{'fp32' if dev.type == 'cpu' else 'bf16 student / fp16 teachers'}")
    print("Random weights throughout: timing does not depend on weight values, so speed ratios "
          "are honest without pretrained checkpoints.")
    print(f"student attention: MTDP_ATTENTION={os.environ.get('MTDP_ATTENTION', 'auto')}", end="")
    if dev.type == "cpu":
        fused = kernels.attention_heads() is not None  # built here, outside the timed runs
        print(", compiled attention kernel: " + (
            "yes" if fused else f"no ({kernels.unavailable_reason()})"))
    else:
        print()
    print(f"real proteins: {len(run.real_s)} sampled (mean "
          f"{sum(map(len, run.real_s)) / max(1, len(run.real_s)):.0f} aa, max "
          f"{max(map(len, run.real_s))}); teachers' sample = first {len(run.real_t)} of them")
    gemm = gemm_rates(dev)
    print(f"GEMM {gemm_size(dev)}²: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items())
          + " (the faster is the reference; re-measured at the end)")
    sys.stdout.flush()
    return gemm


def run_throughput(cfg: ThroughputConfig) -> int:
    """Time every model of ``cfg`` and print the table, ratios and targets."""
    t_start = time.perf_counter()
    run = _setup(cfg)
    gemm = _preamble(run)
    for name in run.students:
        run.build(name)
    reps_each = max(1, -(-cfg.repeats // (len(run.teachers) + 1)))
    run.student_runs(reps_each, first=True)
    for name in run.teachers:
        run.build(name)
        if run.fixed_t:
            run.time(name, run.label_fixed, run.fixed_t, cfg.teacher_repeats, False)
        if run.real_t:
            run.time(name, "real (teachers' sample)", run.real_t, cfg.teacher_repeats, False)
        del run.built[name]
        gc.collect()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        run.student_runs(reps_each, first=False)
    # Measured again at the end; the higher of the two is the peak (on a shared machine a
    # busy moment only lowers it, which would flatter every model's fraction).
    again = gemm_rates(run.device)
    gemm = {k: max(v, again[k]) for k, v in gemm.items()}
    # CPU: fp32 throughout, the faster fp32 GEMM is the reference. CUDA: the models run in
    # bf16/fp16, so the bf16 GEMM is.
    ref_name = max(gemm, key=gemm.get) if run.device.type == "cpu" else "bf16 matmul"
    print(f"\nGEMM {gemm_size(run.device)}², best of start and end: " + ", ".join(
        f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()))
    report(run.rows, gemm[ref_name], run.device, run.students, run.teachers, run.label_fixed,
           run.build_s, time.perf_counter() - t_start, run.budget)
    return 0


def report(rows: dict, peak: float, device: torch.device, students: list[str],
           teachers: list[str], label_fixed: str, build_s: dict, total_s: float,
           budget: int) -> None:
    gib = 1024 ** 3
    mem_name = "peak GPU mem GiB" if device.type == "cuda" else "peak RSS GiB (+act.)"
    print(f"\nbatching: mtdp.embed.embed_sequences, token budget {budget}, length-sorted; "
          "times are medians of the repeats (students: each after one untimed pass)")
    hdr = (f"{'model':<22} {'input':<25} {'prot':>5} {'sec':>8} {'prot/s':>8} {'tok/s':>8} "
           f"{'GFLOP/s':>8} {'%peak':>6} {mem_name:>20} {'runs':>4}")
    print(hdr)
    print("-" * len(hdr))
    for (name, label), r in rows.items():
        mem = f"{r.peak / gib:.2f} (+{max(0, r.extra) / gib:.2f})"
        print(f"{LABELS[name]:<22} {label:<25} {r.proteins:>5} {r.seconds:>8.3f} "
              f"{r.proteins_per_s:>8.2f} {r.tokens_per_s:>8.0f} {r.gflops:>8.1f} "
              f"{100 * r.gflops / peak:>5.0f}% {mem:>20} {len(r.times):>4}")
    print("build+warm-up s: " + ", ".join(f"{LABELS[k]} {v:.1f}" for k, v in build_s.items()))

    def per_protein(name: str, label: str) -> float | None:
        r = rows.get((name, label))
        return r.seconds / r.proteins if r else None

    print("\nspeed-up (time per protein, same input):")
    for t in teachers:
        for s in students:
            for label in (label_fixed, "real (teachers' sample)"):
                ts_, st_ = per_protein(t, label), per_protein(s, label)
                if ts_ is None:
                    continue
                if st_:
                    print(f"  {LABELS[s]} : {LABELS[t]:<22} {label:<25} {ts_ / st_:6.1f}x")
    if "student" in students and device.type == "cpu":
        fx, rl = rows.get(("student", label_fixed)), rows.get(("student", "real"))
        print("\nstudent targets (issue #8):")
        if fx:
            print(f"  GEMM efficiency on {label_fixed}: {100 * fx.gflops / peak:.0f}% of peak "
                  f"(target >= 80%)")
        if fx and rl:
            print(f"  tokens/s real / {label_fixed}: {rl.tokens_per_s / fx.tokens_per_s:.2f} "
                  f"(target >= 0.85)")
        for t, goal in (("esm2_650m", 40), ("prott5_xl", 60)):
            ts_ = per_protein(t, label_fixed)
            st_ = per_protein("student", label_fixed)
            if ts_ and st_:
                print(f"  vs {LABELS[t]}: {ts_ / st_:.1f}x (target >= {goal}x)")
    if "student" in students and device.type == "cuda":
        fx = rows.get(("student", label_fixed))
        if fx:
            print(f"\nstudent, {fx.proteins:,} proteins x {label_fixed}, bf16 on "
                  f"{torch.cuda.get_device_name(device)}: {fx.seconds:.2f} s end to end "
                  f"({fx.proteins_per_s:,.0f} proteins/s; issue #8 target for 10,000 on an "
                  "H100: < 5 s)")
    print(f"\ntotal wall time {total_s:.0f} s")
