"""Process set-up shared by every entry point: environment defaults and starting Ray.

* :func:`apply_env_defaults` turns telemetry off (Ray usage stats, MLflow) and quiets
  tokenizers' fork warning, without overriding anything the user set.
* :func:`init_ray` is the one place a Ray connection is made: the cluster named by an
  explicit address or ``$RAY_ADDRESS`` (as ``ray job submit`` sets it), otherwise a private
  local cluster (``address="local"`` never attaches to another Ray found on the host). The
  variables Ray workers need (the data folder, offline hub, MLflow, mtdp's cache) travel in
  the runtime environment.
* :func:`release_heap` hands the C heap's free pages back to the system, for long-lived
  workers whose batches vary in size; :class:`HeapReleaser` does it at most a set share of
  the time, and :data:`release_heap_after_batch` is the process's one such releaser (the
  embedding engine calls it after every call, the store writer after every commit).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Set when absent, before ray / mlflow / transformers are imported.
ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    # Tune's console reporter: the classic one is silent at verbose=0 (the new one still
    # prints where results are stored); mtdp prints its own trial counter.
    "RAY_AIR_NEW_OUTPUT": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
#: Passed on to Ray workers when set in the driver.
WORKER_ENV = ("MTDP_DATA_DIR", "MTDP_CACHE", "MTDP_UNIREP_WEIGHTS", "MTDP_KERNELS",
              "MTDP_ATTENTION", "HF_HUB_OFFLINE", "HF_HOME", "MLFLOW_TRACKING_URI",
              "RAY_DATA_LOGGING_CONFIG", "MTDP_STORE_KEEP_VERSIONS_S")


#: Ray Data's console at WARNING (every record still in the session log), see the file.
RAY_DATA_LOGGING = str(Path(__file__).with_name("ray_data_logging.yaml"))


def apply_env_defaults() -> None:
    """Set :data:`ENV_DEFAULTS` where the environment does not already say otherwise, and
    Ray Data's quieter console (:data:`RAY_DATA_LOGGING`) unless ``MTDP_RAY_DATA_LOGS=1``."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("MTDP_RAY_DATA_LOGS", "").lower() not in ("1", "true", "yes"):
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", RAY_DATA_LOGGING)


def worker_env() -> dict[str, str]:
    """The driver's values of :data:`WORKER_ENV` (and the telemetry defaults) for Ray workers."""
    apply_env_defaults()
    keys = (*ENV_DEFAULTS, *WORKER_ENV)
    return {k: os.environ[k] for k in keys if k in os.environ}


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Connect to Ray once per process (a no-op when already connected).

    ``address`` (or ``$RAY_ADDRESS``) names a running cluster; without one a private local
    Ray is started, without the dashboard, with token auth off (a throw-away cluster of this
    process only; production clusters keep ``RAY_AUTH_MODE=token``). ``kwargs`` go to
    ``ray.init`` (``num_cpus``, ``object_store_memory``, ``log_to_driver``...).
    """
    apply_env_defaults()
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {**worker_env(), **runtime_env.get("env_vars", {})}
    hook = "mtdp.runtime.setup_cluster_worker"
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs.setdefault("include_dashboard", False)
        hook = "mtdp.runtime.setup_local_worker"
        address = "local"
    runtime_env.setdefault("worker_process_setup_hook", hook)
    ray.init(address=address, runtime_env=runtime_env, **kwargs)
    _reconfigure_ray_data()


def setup_cluster_worker() -> None:
    """``worker_process_setup_hook`` of every worker: name its own cluster in
    ``$RAY_ADDRESS``. Ray Train's placement-group cleaner looks the cluster up through the
    State API with no address; with more than one Ray on the host (a throw-away head beside
    another ``ray start``) that lookup fails with "Found multiple active Ray instances" and
    the cleaner's thread dies with a 30-line traceback."""
    import ray

    try:
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - a hook must never stop a worker from starting
        pass


#: Loggers of Ray components whose messages on a private local cluster are noise: Ray Train's
#: placement-group cleaner polls the State API, which lives in the dashboard that a private
#: local Ray runs without, and warns on every poll (it guards against an ungracefully dying
#: controller of a long-lived cluster; a private cluster ends with its driver anyway).
QUIET_LOCAL = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def setup_local_worker() -> None:
    """``worker_process_setup_hook`` of private local clusters: :func:`setup_cluster_worker`,
    and :data:`QUIET_LOCAL` silenced."""
    import logging

    setup_cluster_worker()
    for name in QUIET_LOCAL:
        logging.getLogger(name).setLevel(logging.ERROR)


class DropProgressNotice:
    """Logging filter: drop Ray Data's "Progress bars disabled" notice (mtdp turns its bars
    off in jobs on purpose and prints its own progress)."""

    def filter(self, record) -> bool:
        return "Progress bars disabled" not in record.getMessage()


def _reconfigure_ray_data() -> None:
    """Ray Data reads its logging configuration when imported: if it was imported before
    :func:`apply_env_defaults` set ours, apply it now."""
    import sys

    if "ray.data" in sys.modules and os.environ.get("RAY_DATA_LOGGING_CONFIG"):
        from ray.data._internal.logging import configure_logging

        configure_logging()


def ray_get(refs):
    """``ray.get`` that re-raises a task's own exception (e.g. a SequenceError naming a record)
    unwrapped, so the user sees the message, not Ray's wrapper."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


_LIBC: Any = None


def release_heap() -> bool:
    """Return the C heap's free memory to the system (glibc ``malloc_trim``); ``False`` where
    the C library has none (musl, macOS).

    A long-lived worker whose batches vary in size (an embedding actor: each batch's tensors
    have another shape) otherwise keeps what glibc freed but cannot give back, so its memory
    creeps up with the batches seen — 771 → 1,056 MB of heap over 60 batches of 512 proteins
    in one actor, flat at ~770 MB with a trim after each batch (10-18 ms each)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


class HeapReleaser:
    """:func:`release_heap` after a batch, at most ``share`` of the worker's time: a trim
    costs milliseconds, a CPU batch seconds, a GPU batch maybe less than the trim, so the next
    is due only once ``1/share`` times the last one's cost has passed."""

    def __init__(self, share: float = 0.02) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share, self.due, self.count = share, 0.0, 0

    def __call__(self) -> bool:
        import time

        start = time.perf_counter()
        if start < self.due:
            return False
        released = release_heap()
        cost = time.perf_counter() - start
        self.due = start + cost / self.share
        self.count += released
        return released


#: The process's releaser: a trim is process-wide, so is the share of time it may take.
release_heap_after_batch = HeapReleaser()
