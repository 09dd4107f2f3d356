"""Shared fixtures: offline, quiet environment; real data from ../shared/data; one local Ray.

Ray is started lazily by the ``ray_session`` fixture, once for the whole run (starting and
stopping it per test costs seconds), and shut down at the end.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Set before anything imports ray / mlflow / transformers.
os.environ.setdefault("MTDP_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The speed benchmarks' and the studies' code is not in the wheel (pyproject's pytest
# `pythonpath` finds it here); Ray workers import it by name, so they get the paths too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "benchmarks"), str(ROOT / "research"),
     *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark data folder (``$MTDP_DATA_DIR``, ../shared/data in CI)."""
    d = Path(os.environ["MTDP_DATA_DIR"])
    if not d.is_dir():
        pytest.fail(f"MTDP_DATA_DIR={d} does not exist; tests need ../shared/data beside the repo")
    return d


@pytest.fixture(scope="session")
def real_fasta(data_dir: Path) -> Path:
    """A real FASTA (DeepLoc 1.0 test set, 2,768 Swiss-Prot proteins)."""
    return data_dir / "deeploc1" / "deeploc_test_set.fasta"


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """All tests track to a throw-away SQLite store unless the caller set one."""
    if "MLFLOW_TRACKING_URI" not in os.environ:
        db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    yield


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole test session (2 CPUs, no dashboard, small store)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=500 * 1024 * 1024, log_to_driver=False,
                 runtime_env={"env_vars": {"MTDP_DATA_DIR": os.environ["MTDP_DATA_DIR"],
                                           "HF_HUB_OFFLINE": "1"}})
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture
def cpus_back(ray_session):
    """``cpus_back()``: whether the cluster's free CPUs come back, within ``within`` seconds
    (Ray frees a removed actor's CPUs asynchronously), to what they were when the test began:
    what a finished or failed pass held is released, even while its exception is kept."""
    import time

    def free() -> float:
        return ray_session.available_resources().get("CPU", 0.0)

    start = free()

    def check(within: float = 30.0) -> bool:
        deadline = time.monotonic() + within
        while free() < start - 1e-6:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    return check
