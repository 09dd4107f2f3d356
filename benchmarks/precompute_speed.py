"""Throughput of the teacher precompute (Ray Data actor pools) for 1 vs 2 actors per teacher.

    python benchmarks/precompute_speed.py                       # 800 real proteins, tiny ESM-2
    python benchmarks/precompute_speed.py --n 2000 --teachers tiny-random-esm2,tiny-random-t5

Each configuration is a fresh precompute of the same real proteins (DeepLoc 1.0 test set from
$MTDP_DATA_DIR) into a temporary directory. Printed per configuration: proteins/s and
residues/s of the embedding phase measured on the wall clock (every teacher's pass and the
shards' assembly; it includes starting the actors and loading the models, as a real run does),
the steady-state rate (per teacher pass: proteins committed after the first commit, over the
time between first and last commit, actor start-up excluded; the passes' times summed), the
whole run's wall time, and the teachers' busy time summed over actors
(if 2 actors' busy time doubles while the wall time stays, the CPUs were already saturated). Tiny random
teachers measure the pipeline (scheduling, batching, I/O), not a real model's speed. On a
shared machine the figures vary with the load: compare numbers from one invocation only.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

from mtdp.io import data_dir
from mtdp.precompute import PrecomputeConfig, run_precompute
from mtdp.runtime import init_ray
from mtdp.sequences import read_fasta, write_fasta

def one_run(fasta: Path, out: Path, actors: int, args) -> dict:
    """One precompute with ``actors`` actors per teacher; its throughput figures."""
    cfg = PrecomputeConfig(inputs=[str(fasta)], teachers=args.teachers.split(","),
                           output=str(out), max_len=args.max_len, num_shards=args.shards,
                           batch_tokens=args.batch_tokens, actors_per_teacher=actors,
                           commit_rows=args.commit_rows,
                           progress=False, track=False)
    t0 = time.perf_counter()
    manifest = run_precompute(cfg)
    wall = time.perf_counter() - t0
    this = manifest.extra["this_run"]
    return {"actors_per_teacher": actors, "teachers": cfg.teachers,
            "proteins": manifest.rows, "residues": manifest.extra["residues"],
            "embed_seconds": round(this["seconds"], 2),
            "proteins_per_s": round(this["proteins_per_s"], 1),
            "residues_per_s": round(this["tokens_per_s"], 0),
            "steady_proteins_per_s": round(this.get("steady_proteins_per_s", 0.0), 1),
            # Summed over actors: above the embed phase's wall time = actors overlapped.
            "teacher_busy_seconds": manifest.extra["teacher_seconds"],
            "run_wall_seconds": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON line per configuration plus a summary table."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=800, help="number of real proteins (default 800)")
    p.add_argument("--max-len", type=int, default=256, help="truncation length (default 256)")
    p.add_argument("--teachers", default="tiny-random-esm2",
                   help="comma-separated teacher specs (default tiny-random-esm2)")
    p.add_argument("--actors", default="1,2", help="actor counts to compare (default 1,2)")
    p.add_argument("--shards", type=int, default=16, help="shards (work units) per run")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--commit-rows", type=int, default=50,
                   help="proteins per store commit (small: the steady rate needs commits)")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2,
                   help="CPUs of the local Ray (default: all)")
    args = p.parse_args(argv)
    records = read_fasta(data_dir() / "deeploc1" / "deeploc_test_set.fasta")[:args.n]
    init_ray(num_cpus=args.num_cpus, log_to_driver=False, object_store_memory=512 << 20)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "input.fasta"
        write_fasta(records, fasta)
        for actors in [int(a) for a in args.actors.split(",")]:
            results.append(one_run(fasta, Path(tmp) / f"run-{actors}", actors, args))
            print(json.dumps(results[-1]), flush=True)
    print(f"\nprecompute throughput, {args.n} proteins cut to {args.max_len}, teachers "
          f"{args.teachers}, {args.num_cpus} CPU(s) on {socket.gethostname()} (load average "
          f"{os.getloadavg()[0]:.1f} at the end; a shared machine varies):")
    for r in results:
        print(f"  {r['actors_per_teacher']} actor(s)/teacher: {r['proteins_per_s']:8.1f} "
              f"proteins/s  {r['residues_per_s']:10.0f} residues/s  steady state "
              f"{r['steady_proteins_per_s']:8.1f} proteins/s  (embed phase "
              f"{r['embed_seconds']} s, whole run {r['run_wall_seconds']} s, teacher busy "
              f"{sum(r['teacher_busy_seconds'].values()):.1f} s summed over actors)")
    if len(results) > 1 and results[0]["proteins_per_s"]:
        print(f"  speed-up {results[-1]['actors_per_teacher']} vs "
              f"{results[0]['actors_per_teacher']} actor(s): "
              f"{results[-1]['proteins_per_s'] / results[0]['proteins_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
