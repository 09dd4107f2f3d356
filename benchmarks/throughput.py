"""Per-protein embedding throughput: the student vs teacher-sized models, side by side.

Same process, same input, same batching code (:func:`mtdp.embed.embed_sequences` over
:class:`mtdp.embedder.Embedder` objects) for:

* ``student``        the paper student (6-layer T5, d_model 512) with mtdp's fused inference path;
* ``student-stock``  the same weights through the stock ``transformers`` forward (reference);
* ``esm2_650m``      fair-esm ``ESM2`` with ESM-2 650M's architecture (33 layers, 1280-d, 20
                     heads), random weights, wrapped in :class:`mtdp.teachers.ESM2Teacher`;
* ``prott5_xl``      ``transformers`` ``T5EncoderModel`` with ProtT5-XL-U50's encoder
                     architecture (24 layers, d_model 1024, d_ff 16384, 32 heads × 128), random
                     weights, wrapped in :class:`mtdp.teachers.T5Teacher`.

Teachers run as users run them (stock modules, default attention). Timing does not depend on
weight values, so random weights give honest speed ratios without downloading checkpoints.

Inputs: a fixed-length set (``--fixed-len`` residues, the paper's 10k × 1 kbp test scaled down)
and real proteins with their real length distribution (random sample of DeepLoc 1.0 test,
``$MTDP_DATA_DIR``), truncated to 1,000 residues like every mtdp model sees them.

It also measures the machine's fp32 GEMM rate (2048² matmul through torch's default BLAS, and
through oneDNN with plain and with pre-packed weights; the fastest is the reference) and
reports each model's achieved GFLOP/s (matmul FLOPs counted from the architecture, attention
included, padding excluded) as a fraction of it. CPU: fp32. CUDA (when present): bf16 student, fp16 teachers (as the
teacher wrappers run them), SDPA.

    python benchmarks/throughput.py                       # default run, ~5 min on 2 cores
    python benchmarks/throughput.py --models student student-stock --student-fixed 32
    python benchmarks/throughput.py --device cuda --student-fixed 10000 --models student
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from mtdp import kernels  # noqa: E402
from mtdp.embed import default_batch_tokens, embed_sequences  # noqa: E402
from mtdp.embedder import Embedder, StudentEmbedder  # noqa: E402
from mtdp.sequences import prepare, read_fasta  # noqa: E402
from mtdp.student import StudentConfig, StudentModel  # noqa: E402
from mtdp.teachers import ESM2_MODELS, ESM2Teacher, T5Teacher  # noqa: E402

MODELS = ("student", "student-stock", "esm2_650m", "prott5_xl")
LABELS = {"student": "student (mtdp fused)", "student-stock": "student (stock T5)",
          "esm2_650m": "ESM-2 650M (stock)", "prott5_xl": "ProtT5-XL enc (stock)"}
AA = "ACDEFGHIKLMNPQRSTVWY"


# ---- models -------------------------------------------------------------------------------
def build_student(fast: bool) -> StudentEmbedder:
    """The paper student (random init: speed does not depend on weights)."""
    torch.manual_seed(0)
    model = StudentModel(StudentConfig.preset("paper"))
    model.fast_inference = fast
    return StudentEmbedder(model, name="student" if fast else "student-stock",
                           source="random-init", pretrained=False)


def build_esm2_650m() -> ESM2Teacher:
    """fair-esm ESM2 with esm2_t33_650M_UR50D's architecture, random weights."""
    import esm
    from esm.model.esm2 import ESM2

    layers, dim, heads = ESM2_MODELS["esm2_t33_650M_UR50D"]
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    torch.manual_seed(0)
    model = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet=alphabet)
    return ESM2Teacher(model, alphabet, name="esm2_650m-random", source="random-init",
                       pretrained=False)


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


def build(name: str) -> Embedder:
    return {"student": lambda: build_student(True), "student-stock": lambda: build_student(False),
            "esm2_650m": build_esm2_650m, "prott5_xl": build_prott5_xl}[name]()


# ---- FLOP counts (matmul FLOPs, 2 per multiply-add, from the architecture) ----------------
def t5_flops(cfg, n: int) -> float:
    """FLOPs of a T5 encoder over one sequence of ``n`` tokens (attention included)."""
    inner = cfg.num_heads * cfg.d_kv
    ff_in = 2 if cfg.is_gated_act else 1
    per_token = 2 * (3 * cfg.d_model * inner + inner * cfg.d_model
                     + (ff_in + 1) * cfg.d_model * cfg.d_ff)
    attention = 2 * 2 * n * n * inner  # q kᵀ and p v
    return cfg.num_layers * (n * per_token + attention)


def protein_flops(embedder: Embedder, length: int) -> float:
    """Matmul FLOPs to embed one protein of ``length`` residues with ``embedder``."""
    if isinstance(embedder, StudentEmbedder):
        m = embedder.model
        n = length + 1  # + </s>
        return t5_flops(m.encoder.config, n) + 2 * m.config.d_model * m.config.embed_dim
    if isinstance(embedder, T5Teacher):
        return t5_flops(embedder.model.config, length + 1)
    if isinstance(embedder, ESM2Teacher):
        m = embedder.model
        n = length + 2  # <cls> ... <eos>
        layer = m.layers[0]
        d, ff = m.embed_dim, layer.fc1.out_features
        per_token = 2 * (4 * d * d + 2 * d * ff)
        attention = 2 * 2 * n * n * d
        # fair-esm always runs its LM head (dense d×d + vocabulary projection).
        head = 2 * n * (d * d + d * m.alphabet_size)
        return m.num_layers * (n * per_token + attention) + head
    raise TypeError(f"no FLOP model for {type(embedder).__name__}")


# ---- measurement helpers -------------------------------------------------------------------
def physical_cores() -> int:
    """Physical cores (hyper-threads share one core's FPUs, so they do not help GEMMs)."""
    try:
        pairs, phys, core = set(), None, None
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    pairs.add((phys, core))
                    core = None
        if core is not None:
            pairs.add((phys, core))
        n = len(pairs)
    except OSError:
        n = 0
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n or avail or 1, avail or 1))


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_rss_peak() -> bool:
    """Reset the kernel's per-process RSS high-water mark (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_peak_bytes() -> int:
    """The RSS high-water mark (``VmHWM``) since the last :func:`reset_rss_peak`."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak; on CPU the kernel's RSS
    high-water mark (reset on entry), or where that cannot be reset, RSS sampled every 5 ms
    by a thread (which costs the timed run a little: it wakes and takes the GIL)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0
        self._stop = threading.Event()
        self._hwm = False

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self.peak = rss_bytes()
            self._hwm = reset_rss_peak()
            if not self._hwm:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._hwm:
            self.peak = max(self.peak, rss_peak_bytes())
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_size(device: torch.device) -> int:
    """Square GEMM size for the machine's rate: 2048 on CPU, 8192 on a GPU (fills it)."""
    return 8192 if device.type == "cuda" else 2048


def gemm_rates(device: torch.device, n: int | None = None, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of an n×n×n matmul: fp32 through torch's default BLAS and (CPU) oneDNN; on
    CUDA fp32 (TF32 off) and bf16."""
    n = n or gemm_size(device)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    fns = {"torch.matmul": lambda: a @ b}
    if device.type == "cuda":
        # TF32 off: an honest fp32 reference (bf16 peak is reported separately).
        torch.backends.cuda.matmul.allow_tf32 = False
        ab, bb = a.bfloat16(), b.bfloat16()
        fns["bf16 matmul"] = lambda: ab @ bb
    elif torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        bt = b.t().contiguous()
        fns["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
        try:  # weights pre-packed into oneDNN's layout, as the student's GEMMs use them
            bp = torch.ops.mkldnn._reorder_linear_weight(bt)
            fns["oneDNN packed"] = lambda: torch.ops.mkldnn._linear_pointwise(
                a, bp, None, "none", [], "")
        except (AttributeError, RuntimeError):
            pass
    out = {}
    for name, fn in fns.items():
        fn()
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = 2 * n ** 3 / statistics.median(times) / 1e9
    return out


# ---- inputs --------------------------------------------------------------------------------
def fixed_set(n: int, length: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(AA, k=length)) for _ in range(n)]


def real_sets(path: Path, n_large: int, n_small: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Random real proteins (prepared: cleaned, truncated to 1,000): a large sample and the
    first ``n_small`` of it (the teachers' sample, so ratios compare identical input)."""
    records = read_fasta(path)
    rng = random.Random(seed)
    rng.shuffle(records)
    seqs = [prepare(r.sequence, seq_id=r.id, source=str(path)) for r in records]
    if len(seqs) < max(n_large, n_small):
        raise ValueError(f"{path} has {len(seqs)} proteins; asked for {max(n_large, n_small)}")
    return seqs[:max(n_large, n_small)], seqs[:n_small]


# ---- timing ---------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    input: str
    proteins: int
    residues: int
    flops: float
    times: list[float] = field(default_factory=list)
    peak: int = 0
    #: Largest rise over the pre-run memory (activations, temporaries) of any repeat.
    extra: int = 0

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    @property
    def proteins_per_s(self) -> float:
        return self.proteins / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.residues / self.seconds

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9


def time_embed(embedder: Embedder, name: str, label: str, seqs: list[str], repeats: int,
               batch_tokens: int | None, rows: dict, warmup: bool = False) -> Row:
    """Time ``embed_sequences`` (repeats accumulate into one row; the median is reported).

    ``warmup``: one untimed pass over the same input first, so the timed ones measure the
    steady state of embedding a large file (allocator and caches warm again after another
    model ran), not the first batch after a switch."""
    key = (name, label)
    row = rows.get(key)
    if row is None:
        row = rows[key] = Row(name, label, len(seqs), sum(map(len, seqs)),
                              sum(protein_flops(embedder, len(s)) for s in seqs))
    dev = embedder.device
    if warmup:
        embed_sequences(embedder, seqs, batch_tokens=batch_tokens)
        sync(dev)
    for _ in range(repeats):
        gc.collect()
        base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else rss_bytes()
        with PeakMemory(dev) as pm:
            t0 = time.perf_counter()
            embed_sequences(embedder, seqs, batch_tokens=batch_tokens)
            sync(dev)
            row.times.append(time.perf_counter() - t0)
        row.peak = max(row.peak, pm.peak)
        row.extra = max(row.extra, pm.peak - base)
        # Progress on stderr, so a long run shows where it is (the table comes at the end).
        print(f"  .. {LABELS[name]:<22} {label:<25} {row.times[-1]:8.3f} s", file=sys.stderr,
              flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: physical cores available)")
    ap.add_argument("--fixed-len", type=int, default=1000, help="residues per fixed-length protein")
    ap.add_argument("--student-fixed", type=int, default=8, help="fixed-length proteins, student")
    ap.add_argument("--teacher-fixed", type=int, default=4, help="fixed-length proteins, teachers")
    ap.add_argument("--student-real", type=int, default=64, help="real proteins, student")
    ap.add_argument("--teacher-real", type=int, default=2,
                    help="real proteins, teachers (0: skip); the student also runs these")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per student run")
    ap.add_argument("--teacher-repeats", type=int, default=1, help="timed repeats per teacher run")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help="token budget per batch (default: mtdp.embed's for the device)")
    ap.add_argument("--fasta", type=Path, default=None,
                    help="real proteins (default $MTDP_DATA_DIR/deeploc1/deeploc_test_set.fasta)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    fasta = args.fasta or Path(os.environ.get("MTDP_DATA_DIR", Path(__file__).resolve().parents[1]
                                              .parent / "shared" / "data")) \
        / "deeploc1" / "deeploc_test_set.fasta"
    wanted_teachers = [m for m in args.models if m in ("esm2_650m", "prott5_xl")]
    students = [m for m in args.models if m.startswith("student")]
    n_tfix = args.teacher_fixed if wanted_teachers else 0
    n_treal = args.teacher_real if wanted_teachers else 0
    fixed_s = fixed_set(max(args.student_fixed, n_tfix), args.fixed_len, args.seed)
    fixed_t = fixed_s[:n_tfix]
    real_s, real_t = real_sets(fasta, args.student_real, n_treal, args.seed)
    real_s = real_s[:args.student_real]
    label_fixed = f"{args.fixed_len} aa"
    t_start = time.perf_counter()

    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
          f"), torch {torch.__version__}, {threads} threads (of {os.cpu_count()} logical CPUs), "
          f"{'fp32' if device.type == 'cpu' else 'bf16 student / fp16 teachers'}")
    print("Random weights throughout: timing does not depend on weight values, so speed ratios "
          "are honest without pretrained checkpoints.")
    print(f"student attention: MTDP_ATTENTION={os.environ.get('MTDP_ATTENTION', 'auto')}", end="")
    if device.type == "cpu":
        fused = kernels.attention_heads() is not None  # built here, outside the timed runs
        print(", compiled attention kernel: " + (
            "yes" if fused else f"no ({kernels.unavailable_reason()})"))
    else:
        print()
    print(f"real proteins: {fasta.name}, {len(real_s)} sampled (mean "
          f"{sum(map(len, real_s)) / max(1, len(real_s)):.0f} aa, max {max(map(len, real_s))}); "
          f"teachers' sample = first {len(real_t)} of them")
    gemm = gemm_rates(device)
    n_gemm = gemm_size(device)
    print(f"GEMM {n_gemm}²: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items())
          + f" (the faster is the reference; re-measured at the end)")
    sys.stdout.flush()

    rows: dict = {}
    budget = args.batch_tokens or default_batch_tokens(device)
    built: dict[str, Embedder] = {}
    build_s: dict[str, float] = {}

    def student_runs(reps: int, first: bool) -> None:
        # The fused student's ratio inputs are re-timed after each teacher, so machine noise
        # hits every model alike; the long 'real' set and the stock reference run once.
        for name in students:
            if name != "student" and not first:
                continue
            emb = built[name]
            if fixed_s[:args.student_fixed]:
                time_embed(emb, name, label_fixed, fixed_s[:args.student_fixed], reps, budget,
                           rows, warmup=True)
            if real_s and first:
                time_embed(emb, name, "real", real_s, reps, budget, rows, warmup=True)
            if real_t and wanted_teachers:
                time_embed(emb, name, "real (teachers' sample)", real_t, reps, budget, rows,
                           warmup=True)

    for name in students:
        t0 = time.perf_counter()
        built[name] = build(name).to(device)
        embed_sequences(built[name], fixed_set(2, 300, 1), batch_tokens=budget)  # warm-up
        build_s[name] = time.perf_counter() - t0
    reps_each = max(1, -(-args.repeats // (len(wanted_teachers) + 1)))
    student_runs(reps_each, first=True)
    for name in wanted_teachers:
        t0 = time.perf_counter()
        emb = build(name).to(device)
        embed_sequences(emb, fixed_set(1, 50, 1), batch_tokens=budget)  # warm-up
        build_s[name] = time.perf_counter() - t0
        if fixed_t:
            time_embed(emb, name, label_fixed, fixed_t, args.teacher_repeats, budget, rows)
        if real_t:
            time_embed(emb, name, "real (teachers' sample)", real_t, args.teacher_repeats,
                       budget, rows)
        del emb
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        student_runs(reps_each, first=False)
    # Measured again at the end; the higher of the two is the peak (on a shared machine a
    # busy moment only lowers it, which would flatter every model's fraction).
    again = gemm_rates(device)
    gemm = {k: max(v, again[k]) for k, v in gemm.items()}
    # CPU: fp32 throughout, the faster fp32 GEMM is the reference. CUDA: the models run in
    # bf16/fp16, so the bf16 GEMM is.
    ref_name = max(gemm, key=gemm.get) if device.type == "cpu" else "bf16 matmul"
    print(f"\nGEMM {n_gemm}², best of start and end: " + ", ".join(
        f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()))
    report(rows, gemm[ref_name], device, students, wanted_teachers, label_fixed, build_s,
           time.perf_counter() - t_start, budget)
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


if __name__ == "__main__":
    sys.exit(main())
