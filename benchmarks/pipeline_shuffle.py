"""The size rule of the pipeline's two shuffles (staging's groupby by shard, the lookup's by
hash shard; `mtdp.pipeline.context`), measured on its data half: staging and the pass's
lookups, no model run, one fresh process and local Ray per setting, side by side.

A reduce task holds rows / partitions, a map task rows / map tasks. The settings force, at
the size run here, what a task would hold at a larger one
(`mtdp_bench.shuffle_perf.SETTINGS`): `as-60M-old-rule` (one partition at 1 M
proteins: the ~0.94 M rows of a reduce task at 60 M proteins under the first cap of 64
partitions), `as-60M-rule` (8 partitions, 8 map tasks: a task at 60 M under the rule, 512
of each), `as-60M-128-maps` (8 partitions, 2 map tasks: map tasks capped at 128 instead),
`many-objects` (the most shuffle objects 1 M proteins can make).
Prints each half's seconds, the shuffles' sizes, the largest Ray worker's peak heap (anon).

    python benchmarks/pipeline_shuffle.py                       # 200k proteins, all settings
    python benchmarks/pipeline_shuffle.py --n 1000000 --settings default as-60M-old-rule
    python benchmarks/pipeline_shuffle.py --driver-cost   # the driver's cost of map tasks
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from mtdp_bench.embed_job_perf import generate_inputs, lengths_source, save_random_student
from mtdp_bench.shuffle_perf import DRIVER_COST_GRID, SETTINGS, data_half, driver_cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="proteins (20 %% repeated)")
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--driver-cost", action="store_true",
                    help="the driver's heap and seconds of one shuffle of 1 M tiny rows, by "
                         "map tasks and partitions (no model, no input)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--cost-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child or args.cost_child:
        print(json.dumps(data_half(*args.child) if args.child else driver_cost(*args.cost_child)))
        return
    if args.driver_cost:
        print(f"one groupby of 1,000,000 tiny rows, fresh process each; {os.cpu_count()} CPUs")
        print(f"{'map tasks':>9} {'partitions':>10} {'seconds':>8} {'driver MB':>10}")
        for maps, parts in DRIVER_COST_GRID:
            r = json.loads(subprocess.run(
                [sys.executable, __file__, "--cost-child", str(maps), str(parts)],
                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            print(f"{maps:>9} {parts or 'none':>10} {r['seconds']:>8.1f} {r['driver_mb']:>10}",
                  flush=True)
        return
    print(f"{args.n:,} generated proteins, 20 % repeated ({lengths_source()}); "
          f"{os.cpu_count()} CPUs")
    print(f"{'setting':16} {'stage s':>8} {'lookup s':>9} {'blocks':>7} {'parts':>6} "
          f"{'blocks':>7} {'parts':>6} {'objects':>8} {'worker MB':>10} {'driver':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        fasta = generate_inputs(os.path.join(tmp, "in.fasta"), args.n, duplicates=0.2)
        model = save_random_student(os.path.join(tmp, "student"), "tiny", 512)
        for name in args.settings:
            out = subprocess.run([sys.executable, __file__, "--child", fasta, model,
                                  os.path.join(tmp, name), name], capture_output=True,
                                 text=True)
            if out.returncode:
                sys.exit(f"setting {name} failed:\n{out.stderr[-4000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            objects = r["stage_maps"] * r["stage_partitions"] \
                + r["lookup_maps"] * r["lookup_partitions"]
            print(f"{name:16} {r['stage_s']:>8.1f} {r['lookup_s']:>9.1f} {r['stage_maps']:>7} "
                  f"{r['stage_partitions']:>6} {r['lookup_maps']:>7} "
                  f"{r['lookup_partitions']:>6} {objects:>8} "
                  f"{r['peak_mb'].get('other_anon', 0):>10} "
                  f"{r['peak_mb'].get('driver_anon', 0):>7}")
            print(f"{'':16} {r['proteins']:,} proteins, {r['unique']:,} distinct, "
                  f"{r['groups']} staged shards; largest worker: {r['largest'].strip()[:60]}")


if __name__ == "__main__":
    main()
