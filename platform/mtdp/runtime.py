"""Process set-up shared by every entry point: environment defaults and starting Ray.

* :func:`apply_env_defaults` turns telemetry off (Ray usage stats, MLflow) and quiets
  tokenizers' fork warning, without overriding anything the user set.
* :func:`init_ray` is the one place a Ray connection is made: the cluster named by an
  explicit address or ``$RAY_ADDRESS`` (as ``ray job submit`` sets it), otherwise a private
  local cluster (``address="local"`` never attaches to another Ray found on the host). The
  variables Ray workers need (the data folder, offline hub, MLflow, mtdp's cache) travel in
  the runtime environment.
"""
from __future__ import annotations

import os
from typing import Any

#: Set when absent, before ray / mlflow / transformers are imported.
ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
#: Passed on to Ray workers when set in the driver.
WORKER_ENV = ("MTDP_DATA_DIR", "MTDP_CACHE", "MTDP_UNIREP_WEIGHTS", "MTDP_KERNELS",
              "MTDP_ATTENTION", "HF_HUB_OFFLINE", "HF_HOME", "MLFLOW_TRACKING_URI")


def apply_env_defaults() -> None:
    """Set :data:`ENV_DEFAULTS` where the environment does not already say otherwise."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


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
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs.setdefault("include_dashboard", False)
        address = "local"
    ray.init(address=address, runtime_env=runtime_env, **kwargs)


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
