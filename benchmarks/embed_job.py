"""The embedding job against the one-process engine, side by side in one run, and its memory.

1. **throughput**: the same generated proteins through `mtdp embed` (one process, one torch
   thread) and through `jobs/embed.py` with 1 and 2 actors (fresh store each, fresh local Ray
   each, every stage on the one machine). A compute-bound model: a random-weight 'small'
   student (4 layers, d_model 256). Prints proteins/s and the ratios the issue asks for:
   1 actor / one process (pipeline overhead) and 2 actors / 1 actor (scaling), from wall
   time (the job's embedding phase: every Ray Data stage and the actors' start-up included,
   Ray's own start excluded; the one process: embedding only) and from engine time (the
   seconds inside the model calls: per actor, the job's sum divided by the actors). The
   difference, 'fixed s', is the job's start-up and scheduling cost, paid once per run.
2. **memory**: the job over N proteins for each --sizes with the tiny random student; the
   driver's and each role's peak RSS, USS and anonymous memory (embed actors, the store
   writer, other Ray workers), sampled every 0.5 s over the job's own process tree.

Lengths follow DeepLoc 2.0's real length distribution (read from $MTDP_DATA_DIR when present,
else a log-normal with its median and spread); residues are random; in part 2, 20 % of the
proteins repeat an earlier sequence under a new id (as in redundant catalogues).

    python benchmarks/embed_job.py                                  # 6000 proteins; 10k, 100k
    python benchmarks/embed_job.py --throughput-n 2000 --sizes 10000 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from mtdp_bench.embed_job_perf import (child_main, generate_inputs, lengths_source,
                                            save_random_student)


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(f"child {args[0]} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput-n", type=int, default=6000, help="proteins for part 1")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000],
                    help="proteins for part 2 (none: skip it)")
    ap.add_argument("--max-len", type=int, default=512, help="the students' length limit")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_main(*args.child)))
        return
    print(f"generated inputs: {lengths_source()}")
    with tempfile.TemporaryDirectory() as tmp:
        small = save_random_student(os.path.join(tmp, "small"), "small", args.max_len)
        tiny = save_random_student(os.path.join(tmp, "tiny"), "tiny", args.max_len)
        if args.throughput_n:
            fa = generate_inputs(os.path.join(tmp, "t.fasta"), args.throughput_n)
            print(f"throughput: {args.throughput_n} proteins, random 'small' student "
                  f"(max_len {args.max_len}), {os.cpu_count()} CPUs")
            one = _child("one", fa, small, os.path.join(tmp, "one.parquet"))
            rows = [("mtdp embed (one process)", one)]
            for actors in (1, 2):
                rows.append((f"jobs/embed.py, {actors} actor(s)",
                             _child("job", fa, small, os.path.join(tmp, f"s{actors}"),
                                    str(actors))))
            print(f"{'':30} {'computed':>9} {'wall s':>7} {'proteins/s':>11} "
                  f"{'engine s':>9} {'engine proteins/s':>18} {'fixed s':>8}")
            for name, r, actors in zip([n for n, _ in rows], [r for _, r in rows], (1, 1, 2)):
                engine = r["engine_seconds"] / actors
                print(f"{name:30} {r['computed']:>9} {r['seconds']:>7.1f} "
                      f"{r['proteins_per_s']:>11.1f} {engine:>9.1f} "
                      f"{r['computed'] / engine:>18.1f} {r['seconds'] - engine:>8.1f}")
            w = [r["proteins_per_s"] for _, r in rows]
            e = [r["computed"] / (r["engine_seconds"] / a) for (_, r), a in zip(rows, (1, 1, 2))]
            print(f"wall:   1 actor / one process {w[1] / w[0]:.2f}   2 actors / 1 actor "
                  f"{w[2] / w[1]:.2f}")
            print(f"engine: 1 actor / one process {e[1] / e[0]:.2f}   2 actors / 1 actor "
                  f"{e[2] / e[1]:.2f}")
        if args.sizes:
            print("\nmemory: random 'tiny' student, peak MB: RSS, USS (private memory) and "
                  "anon (heaps only, no object-store pages)")
            cols = [("driver", "driver"), ("driver_anon", "anon"), ("embed", "embed"),
                    ("embed_uss", "USS"), ("embed_anon", "anon"), ("writer", "writer"),
                    ("writer_uss", "USS"), ("writer_anon", "anon"), ("other", "other"),
                    ("other_anon", "anon")]
            print(f"{'proteins':>9} {'unique':>8} {'seconds':>8} "
                  + " ".join(f"{h:>7}" for _, h in cols))
            for n in args.sizes:
                fa = generate_inputs(os.path.join(tmp, f"m{n}.fasta"), n, duplicates=0.2)
                t0 = time.time()
                r = _child("job", fa, tiny, os.path.join(tmp, f"m{n}"), "1")
                rss = r["peak_rss_mb"]
                print(f"{n:>9} {r['unique']:>8} {time.time() - t0:>8.0f} "
                      + " ".join(f"{rss.get(k, 0):>7}" for k, _ in cols))
                print(f"{'':>9} largest other worker (anon): {r['other_worker']}")
                os.remove(fa)


if __name__ == "__main__":
    main()
