"""MLflow conventions: where runs go by default, and fetching registered students back.

With ``MLFLOW_TRACKING_URI`` unset, runs go to a local SQLite store ``./mlflow.db`` (MLflow 3
refuses the old ``./mlruns`` file store by default). Telemetry is off.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_EXPERIMENT = "mtdp"
#: Registered-model name under which trained students are published.
STUDENT_MODEL_NAME = "mtdp-student"


def tracking_uri() -> str:
    """The tracking URI in effect: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<cwd>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def setup_mlflow(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at :func:`tracking_uri`, select ``experiment`` (created if missing) and
    return the URI. Call on the driver before any Ray worker logs (SQLite schema races)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    return uri


def find_student_dir(root: str | os.PathLike) -> Path:
    """The first mtdp student directory at or below ``root``."""
    from .student import CONFIG_FILE, STUDENT_FORMAT

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
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    return f"models:/{name}/{newest.version}"
