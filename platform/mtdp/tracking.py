"""MLflow conventions: where runs go by default, and fetching registered students back.

With ``MLFLOW_TRACKING_URI`` unset, runs go to a local SQLite store ``./mlflow.db`` (MLflow 3
refuses the old ``./mlruns`` file store by default). Telemetry is off.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .runtime import apply_env_defaults

DEFAULT_EXPERIMENT = "mtdp"
#: Registered-model name under which trained students are published.
STUDENT_MODEL_NAME = "mtdp-student"


def tracking_uri() -> str:
    """The tracking URI in effect: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def setup_mlflow(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at :func:`tracking_uri`, select ``experiment`` (created if missing) and
    return the URI. Call on the driver before any Ray worker logs (SQLite schema races)."""
    apply_env_defaults()
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    return uri


def find_student_dir(root: str | os.PathLike) -> Path:
    """The first mtdp student directory at or below ``root``."""
    from .models.student import CONFIG_FILE, STUDENT_FORMAT

    root = Path(root)
    for cfg in sorted(root.rglob(CONFIG_FILE)):
        try:
            if json.loads(cfg.read_text()).get("format") == STUDENT_FORMAT:
                return cfg.parent
        except (json.JSONDecodeError, OSError):
            continue
    raise FileNotFoundError(f"no mtdp student directory under {root}")


def download_student(uri: str) -> Path:
    """Download a student logged to MLflow (``models:/NAME/VERSION``, ``runs:/ID/PATH``) and
    return its local directory."""
    setup_mlflow()
    import mlflow

    if uri.startswith("mlflow:"):
        uri = uri[len("mlflow:"):]
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return find_student_dir(local)


def latest_student_uri(name: str = STUDENT_MODEL_NAME) -> str | None:
    """``models:/NAME/VERSION`` of the newest registered version of ``name`` in the registry
    at :func:`tracking_uri`, or ``None`` when none is registered (what ``serve`` defaults to)."""
    apply_env_defaults()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    return f"models:/{name}/{newest.version}"


_PYFUNC_CLASS = None


def _student_pyfunc_class():
    """The MLflow pyfunc class for students, built on first use (importing mlflow.pyfunc is
    slow); exposed as ``mtdp.tracking.StudentPyfunc`` so pickles resolve it by name."""
    global _PYFUNC_CLASS
    if _PYFUNC_CLASS is None:
        import warnings

        import mlflow.pyfunc

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "add type hints to predict"

            class StudentPyfunc(mlflow.pyfunc.PythonModel):
                """Pyfunc around a student directory (artifact ``student``): ``predict`` takes
                a DataFrame with a ``sequence`` column (or a list of strings) and returns one
                embedding row per sequence."""

                def load_context(self, context) -> None:
                    from .models.student import StudentEmbedder, load_student

                    self._emb = StudentEmbedder(load_student(context.artifacts["student"]))

                def predict(self, context, model_input, params=None):
                    import numpy as np

                    from .embed import embed_sequences
                    from .sequences import prepare

                    seqs = (list(model_input["sequence"]) if hasattr(model_input, "columns")
                            else [str(s) for s in model_input])
                    seqs = [prepare(s, max_len=None, record=i + 1) for i, s in enumerate(seqs)]
                    return np.asarray(embed_sequences(self._emb, seqs), dtype=np.float32)

        StudentPyfunc.__module__ = __name__
        StudentPyfunc.__qualname__ = "StudentPyfunc"
        _PYFUNC_CLASS = StudentPyfunc
    return _PYFUNC_CLASS


def __getattr__(name: str):
    if name == "StudentPyfunc":
        return _student_pyfunc_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def log_student(student_dir: str | os.PathLike, *, run_id: str | None = None,
                registered_name: str | None = STUDENT_MODEL_NAME,
                artifact_path: str = "student") -> str:
    """Log a student directory to MLflow (plain artifact ``student_dir/`` plus a pyfunc model
    that embeds sequences, the directory inside its artifacts) and register it as
    ``registered_name``. Returns ``models:/NAME/VERSION`` (or the logged model's URI when not
    registering); :func:`download_student` turns either back into the directory."""
    apply_env_defaults()
    import mlflow
    import torch

    mlflow.set_tracking_uri(tracking_uri())

    reqs = [f"torch=={torch.__version__.split('+')[0]}", "mlflow", "safetensors",
            "transformers", "numpy", "pandas"]
    import logging
    import warnings

    # The pyfunc wrapper is our own class (resolved by name, see _student_pyfunc_class):
    # MLflow's generic warnings about type hints and CloudPickle are not for our users.
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=run_id, nested=False), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            mlflow.log_artifacts(str(student_dir), artifact_path="student_dir")
            info = mlflow.pyfunc.log_model(
                name=artifact_path, python_model=_student_pyfunc_class()(),
                artifacts={"student": str(student_dir)}, pip_requirements=reqs,
                registered_model_name=registered_name or None)
    finally:
        pyfunc_log.setLevel(level)
    if registered_name:
        return f"models:/{registered_name}/{info.registered_model_version}"
    return info.model_uri
