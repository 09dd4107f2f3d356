"""Quick sweep of distillation settings for the UniRep preset (in-process, no Ray/MLflow);
the sweep lives in :mod:`mtdp_studies.sweep`.

Distils the ``tiny`` student from UniRep-1900 + UniRep-256 on a DeepLoc 2.0 pool (partitions
0-3, truncated to ``--max-len``), then scores each student on 800 held-out proteins of
partition 4: 5-fold logistic-regression probes for localization and membrane, plus the cosine
between each teacher head's output and the real teacher embedding. This is how the preset's
default training settings were picked.

    python research/unirep_sweep.py --baselines
    python research/unirep_sweep.py '{"label": "mlm", "selector": "none"}' \\
        '{"label": "cos", "kd": "cosine", "mlm_w": 0.1, "dropout": 0.0}'
    python research/unirep_sweep.py '{"label": "res1-256only", "res_w": 1.0,
                                        "res_teachers": ["unirep256"]}'

Each JSON object may set: selector, kd (kl|cosine|mse), epochs, preset, lr, bs, kd_w, mlm_w,
temp, dropout (defaults: uniform, cosine, 10, tiny, 3e-3, 8, 1.0, 0.1, 1.0, 0.0), and res_w /
res_teachers for per-residue distillation (default 0 = off, teachers default both).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", help="JSON objects, one student each")
    p.add_argument("--baselines", action="store_true", help="probe the teachers and aac")
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--cache", default="runs/unirep-sweep")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from mtdp_studies.sweep import SweepData, baselines, run_entry

    data = SweepData.load(args.pool, args.max_len, args.cache)
    if args.baselines:
        for name, scores in baselines(data).items():
            print("RESULT", name, scores, flush=True)
    for spec in args.configs:
        r = run_entry(data, json.loads(spec), log=lambda m: print(m, flush=True))
        cos = r.pop("head_cosine")
        print("RESULT", r.pop("label"), r, "held-out head cosine", cos, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
