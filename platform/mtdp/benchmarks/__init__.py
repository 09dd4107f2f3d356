"""Downstream benchmark: the paper's five tasks (membrane, localisation, GO, melting point,
solubility) probed with a small MLP on frozen per-protein embeddings, k-fold CV on Ray Tune.

Modules: :mod:`.sources` (each task's canonical source and file readers), :mod:`.tasks`
(loading, preparing, de-duplicating), :mod:`.metrics`, :mod:`.probes` (the MLP probe and the
Tune trial), :mod:`.config`, :mod:`.cache` (embed each task once per model), :mod:`.runner`
(folds, Tune, MLflow), :mod:`.report` (summary table and figure), :mod:`.pools` (distillation
pools drawn from the benchmark data), :mod:`.perf` (speed and memory measurement). Entry point:
``tune/benchmark.py``. The core library never imports this package.
"""
from .sources import TaskUnavailable
from .tasks import TASKS, Task, available_tasks, load_task

__all__ = ["TASKS", "Task", "TaskUnavailable", "available_tasks", "load_task"]
