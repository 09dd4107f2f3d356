"""Downstream benchmark: the paper's five tasks (membrane, localisation, GO, melting point,
solubility) probed with a small MLP on frozen per-protein embeddings, 10-fold CV on Ray Tune.

Modules: :mod:`.tasks` (loaders with their canonical sources), :mod:`.metrics`,
:mod:`.baselines` (no-weight feature embedders and a random student), :mod:`.probes` (the MLP
probe and the Tune trial), :mod:`.runner` (embedding cache, folds, Tune, MLflow) and
:mod:`.report` (summary table and figure). Entry point: ``tune/benchmark.py``.
"""
from .tasks import TASKS, Task, TaskUnavailable, available_tasks, load_task  # noqa: F401
