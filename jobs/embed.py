#!/usr/bin/env python
"""Embed proteins at scale into the embedding store, on Ray Data (see mtdp.embed_job).

    python jobs/embed.py --inputs uniref50.fasta.gz --model models:/mtdp-student/3 \\
        --store runs/store
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/embed.py --inputs /mnt/data/A.fasta.gz,/mnt/data/B.parquet \\
        --model /mnt/models/student --store s3://bucket/mtdp-store --actors 8

Each distinct sequence is embedded once (SHA-256 of the prepared sequence); sequences the store
already holds for this model are not recomputed. Rerun the same command to resume a killed
job. Export with `mtdp store export`. Settings: defaults < --config YAML < flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from mtdp.config import add_dataclass_arguments, load_config
from mtdp.embed_job import EmbedJobConfig, run_embed_job
from mtdp.runtime import apply_env_defaults
from mtdp.sequences import SequenceError


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file with any of the fields below")
    add_dataclass_arguments(p, EmbedJobConfig)
    args = p.parse_args(argv)
    try:
        result = run_embed_job(load_config(EmbedJobConfig, args.config, args))
    except (SequenceError, ValueError, OSError) as exc:
        print(f"embed: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({**dataclasses.asdict(result),
                      "proteins_per_s": round(result.proteins_per_s, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
