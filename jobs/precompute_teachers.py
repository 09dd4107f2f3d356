#!/usr/bin/env python
"""Precompute teacher embeddings for distillation: FASTA/Parquet → Parquet dataset + manifest.

Local (a private Ray is started)::

    python jobs/precompute_teachers.py --inputs uniprot_sprot.fasta.gz \
        --teachers esm2_t33_650M_UR50D,prot_t5_xl_uniref50 --output runs/teachers-sprot

On a cluster::

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/precompute_teachers.py --config precompute.yaml

Rerun the same command to resume an interrupted run: finished shards are kept, the rest is
computed. Settings come from defaults < ``--config`` YAML < flags.
"""
from __future__ import annotations

import argparse
import json
import sys

from mtdp.config import add_dataclass_arguments, load_config
from mtdp.precompute import PrecomputeConfig, run_precompute
from mtdp.runtime import apply_env_defaults
from mtdp.sequences import SequenceError


def build_parser() -> argparse.ArgumentParser:
    """Argument parser: ``--config`` plus one flag per :class:`PrecomputeConfig` field."""
    p = argparse.ArgumentParser(
        description="Embed proteins with every teacher on Ray Data and write a resumable "
                    "Parquet dataset (data/*.parquet + manifest.json) for distillation.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file with any of the fields below")
    add_dataclass_arguments(p, PrecomputeConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run (or resume) the precompute, print the manifest summary as JSON."""
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(PrecomputeConfig, args.config, args)
        manifest = run_precompute(cfg)
    except (SequenceError, ValueError, FileNotFoundError) as exc:
        print(f"precompute_teachers: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"output": cfg.output, "rows": manifest.rows,
                      "teachers": [t.name for t in manifest.teachers],
                      "split_counts": manifest.split_counts,
                      "rejected": manifest.extra.get("rejected")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
