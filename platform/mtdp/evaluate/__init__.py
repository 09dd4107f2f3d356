"""Evaluation of embeddings: the paper's five tasks (membrane, localisation, GO, melting point,
solubility) probed with a small MLP on frozen per-protein embeddings, k-fold CV on Ray Tune,
and how much of a teacher a student carries (:mod:`.transfer`, :mod:`.closing_probe`).

Modules: :mod:`.fetch` (the tasks' pinned downloads), :mod:`.sources` (each task's source and
readers), :mod:`.tasks` (loading, preparing, de-duplicating), :mod:`.metrics`, :mod:`.probes`
(the MLP probe and the Tune trial), :mod:`.config`, :mod:`.cache` (embed each task once per
model), :mod:`.runner` (folds, Tune, MLflow), :mod:`.report` (summary table and figure),
:mod:`.pools` (protein pools drawn from the benchmark data), :mod:`.homology` (best-hit
folds). Entry points: ``tune/benchmark.py``, ``mtdp data fetch``; the core never imports it.
"""
from .sources import TaskUnavailable
from .tasks import TASKS, Task, available_tasks, load_task

__all__ = ["TASKS", "Task", "TaskUnavailable", "available_tasks", "load_task"]
