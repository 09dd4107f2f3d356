"""Peak memory of `mtdp embed` on large FASTA files: it must not grow with the input size.

Writes synthetic FASTA files of N proteins (random residues, lengths drawn uniformly from
--min-len..--max-len), embeds each in a fresh process with a tiny random teacher (the engine,
not the model, is under test) and prints peak RSS. Streaming means the 100k-protein run peaks
at about the same RSS as the 10k one.

    python benchmarks/embed_memory.py                   # 10k and 100k proteins
    python benchmarks/embed_memory.py --sizes 1000 20000 --model tiny-random-esm2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def write_fasta(path: str, n: int, lo: int, hi: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for i in range(n):
            seq = "".join(rng.choice(AA, size=int(rng.integers(lo, hi + 1))))
            fh.write(f">P{i:07d}\n{seq}\n")


def child(fasta: str, out: str, model: str) -> None:
    from mtdp.embed import embed_file
    from mtdp.models.registry import load_embedder

    s = embed_file(load_embedder(model, device="cpu"), fasta, out, progress=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"proteins": s.proteins, "seconds": round(s.seconds, 1),
                      "peak_rss_mb": round(peak_mb)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--min-len", type=int, default=20)
    ap.add_argument("--max-len", type=int, default=60)
    ap.add_argument("--model", default="tiny-random-t5")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"model {args.model} (random weights: only the engine's memory is measured)")
    print(f"{'proteins':>9} {'seconds':>8} {'peak RSS MB':>12} {'output MB':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            fa, out = os.path.join(tmp, f"{n}.fasta"), os.path.join(tmp, f"{n}.parquet")
            write_fasta(fa, n, args.min_len, args.max_len)
            t0 = time.time()
            res = subprocess.run([sys.executable, __file__, "--model", args.model,
                                  "--child", fa, out, args.model], capture_output=True,
                                 text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{r['proteins']:>9} {time.time() - t0:>8.1f} {r['peak_rss_mb']:>12} "
                  f"{os.path.getsize(out) / 2**20:>10.1f}")


if __name__ == "__main__":
    main()
