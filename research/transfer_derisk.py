#!/usr/bin/env python
"""De-risk arms of the transfer recipe (issue: a student that carries its teacher), each at
equal wall time on this machine, scored the same way:

    python research/transfer_derisk.py label --proteins 10000      # UniRep-1900 labels (store)
    python research/transfer_derisk.py arm NAME --minutes 15 [--set key=value ...]
    python research/transfer_derisk.py speed                        # fp32 vs bf16 here
    python research/transfer_derisk.py table                        # every arm scored
    python research/transfer_derisk.py compare A B                  # paired: A − B ± SE

Labels come from the product path (``mtdp.precompute``: crops of ≤ 512 residues, UniRep-1900
window means w = 8 in the store); training is the product's ``Distiller`` in one process
(fixed proteins per step, token-budget micro-batches); the scores are the ones the final run
reports (:mod:`mtdp.evaluate.transfer`), with linear probes for speed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mtdp_studies.transfer_arms import (WORK, arm_config, compare_arms, evaluate_arm, first_train,
                                        label, load_rows, measure_speed, print_table, train_arm)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("label")
    a.add_argument("--proteins", type=int, default=10000)
    a.add_argument("--multi", action="store_true", help="UniRep-256 too")
    a = sub.add_parser("arm")
    a.add_argument("name")
    a.add_argument("--minutes", type=float, default=15.0)
    a.add_argument("--proteins", type=int, default=10000, help="labelled set to train on")
    a.add_argument("--train-proteins", type=int, default=0,
                   help="train on the first N of its training proteins only (0: all)")
    a.add_argument("--set", nargs="*", default=[], help="DistillConfig / arm fields key=value")
    a.add_argument("--eval-only", action="store_true")
    a = sub.add_parser("compare", help="two arms' paired gain-capture difference")
    a.add_argument("arms", nargs=2)
    sub.add_parser("speed")
    sub.add_parser("table")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.cmd == "label":
        label(args.proteins, args.multi)
    elif args.cmd == "arm":
        out = WORK / "arms" / args.name
        cfg = arm_config(args.set)
        if not args.eval_only:
            rows, man = load_rows(args.proteins, cfg.pop("data_variant", "crop"))
            if args.train_proteins:
                rows = first_train(rows, args.train_proteins)
            train_arm(out, cfg, rows, man, args.minutes * 60)
        res = evaluate_arm(out, args.proteins)
        print(json.dumps(res, indent=1))
    elif args.cmd == "compare":
        compare_arms(*args.arms)
    elif args.cmd == "speed":
        measure_speed()
    else:
        print_table()
    return 0


if __name__ == "__main__":
    t0 = time.time()
    code = main()
    print(f"[derisk] done in {time.time() - t0:.0f} s", flush=True)
    np.seterr(all="ignore")
    sys.exit(code)
