"""Teacher precompute on Ray Data: proteins → one Parquet dataset of teacher embeddings
(the contract of :mod:`mtdp.teacher_data`).

It runs the library's one embedding pipeline (:mod:`mtdp.pipeline`: staging, then one
embedding pass per teacher into the store) and adds what distillation needs. Modules:
:mod:`.config` (settings), :mod:`.rundir` (layout, resume state), :mod:`.pipeline` (the
teachers' passes, then assembly), :mod:`.shards` (shard files from the store, manifest),
:mod:`.run` (:func:`run_precompute`, MLflow).
"""
from .config import PrecomputeConfig
from .rundir import FAULTS_ENV
from .run import run_precompute

__all__ = ["FAULTS_ENV", "PrecomputeConfig", "run_precompute"]
