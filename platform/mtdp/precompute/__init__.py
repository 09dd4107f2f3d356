"""Teacher precompute on Ray Data: proteins → one Parquet dataset of teacher embeddings
(the contract of :mod:`mtdp.teacher_data`).

Modules: :mod:`.config` (settings), :mod:`.rundir` (layout, resume state), :mod:`.stage`
(phase 1: parse, prepare, deduplicate), :mod:`.actor` (phase 2: the teacher actor),
:mod:`.pipeline` (phase 2 on Ray Data), :mod:`.shards` (phase 3: shard files, manifest),
:mod:`.run` (:func:`run_precompute`, MLflow).
"""
from .config import PrecomputeConfig
from .rundir import FAULTS_ENV
from .run import run_precompute

__all__ = ["FAULTS_ENV", "PrecomputeConfig", "run_precompute"]
