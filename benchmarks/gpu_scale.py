"""UniRep → the paper-size student on one GPU, in one process (issue 19's `gpu` scale; the
run lives in :mod:`mtdp.experiments.gpu_scale`, and why it runs without Ray is said there).

    python benchmarks/gpu_scale.py                                   # the GPU plan
    python benchmarks/gpu_scale.py --pool 64 --epochs 1 --task-proteins 40   # CPU smoke test

Stage timings are printed as they end; WORKDIR/gpu_scale.md and .json hold the table.
`bash benchmarks/device_run.sh` is the one prepared command for a lent GPU machine
(`python benchmarks/device_pack.py` first builds what it carries).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    from mtdp.config import add_dataclass_arguments, load_config
    from mtdp.experiments.gpu_scale import GpuScaleConfig, run_gpu_scale

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    add_dataclass_arguments(p, GpuScaleConfig)
    try:
        cfg = load_config(GpuScaleConfig, None, p.parse_args(argv))
    except ValueError as exc:
        print(f"gpu_scale: error: {exc}", file=sys.stderr)
        return 2
    print(f"[gpu-scale] wrote {run_gpu_scale(cfg, log=lambda m: print(m, flush=True))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
