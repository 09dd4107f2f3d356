"""The transfer recipe at paper size on one GPU, in one process (the run lives in
:mod:`mtdp_studies.gpu_scale`, and why it runs without Ray is said there).

    python research/gpu_scale.py                                   # the GPU plan
    python research/gpu_scale.py --pool 64 --epochs 1 --task-proteins 40 --students tiny \
        --teachers tiny-random-t5,tiny-random-esm2 --modes uniform      # CPU smoke test

Stage timings are printed as they end; WORKDIR/gpu_scale.md and .json hold the table.
`bash benchmarks/device_run.sh` is the one prepared command for a lent GPU machine
(`python benchmarks/device_pack.py` first builds what it carries).
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    from mtdp.config import config_from_cli
    from mtdp_studies.gpu_scale import GpuScaleConfig, run_gpu_scale

    cfg = config_from_cli(GpuScaleConfig, __doc__, "gpu_scale", argv)
    if cfg is None:
        return 2
    print(f"[gpu-scale] wrote {run_gpu_scale(cfg, log=lambda m: print(m, flush=True))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
