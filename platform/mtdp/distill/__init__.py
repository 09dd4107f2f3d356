"""Multi-teacher distillation of the student.

Modules: :mod:`.config` (settings), :mod:`.batches` (rows → tensors), :mod:`.core` (the
:class:`~.core.Distiller`, independent of Ray), :mod:`.local` (an in-process training loop),
:mod:`.worker` (the Ray Train worker) and :mod:`.ray_job` (the driver, :func:`run_distill`).
"""
from .config import DistillConfig
from .ray_job import DistillResult, run_distill

__all__ = ["DistillConfig", "DistillResult", "run_distill"]
