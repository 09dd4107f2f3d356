"""The Serve application builder: ``serve run serve.app:mtdp KEY=VALUE ...`` (or
``import_path: mtdp.serving:build_app`` in a Serve config file)."""
from __future__ import annotations

import dataclasses
from typing import Any

from ray import serve

from ..models.registry import MLFLOW_PREFIXES
from .config import ServeConfig, resolve_model_spec
from .service import EmbeddingService


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: ``serve run serve.app:mtdp model=PATH max_replicas=4 ...``.

    ``args`` are :class:`ServeConfig` fields (strings from the command line are converted).
    The model spec is resolved and checked here, so mistakes fail fast.
    """
    from ..tracking import tracking_uri

    cfg = ServeConfig.from_args(args)
    cfg.model = resolve_model_spec(cfg.model)
    if cfg.model.startswith(MLFLOW_PREFIXES):
        cfg.tracking_uri = cfg.tracking_uri or tracking_uri()
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}}
    if cfg.max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        options["num_replicas"] = cfg.num_replicas
    return EmbeddingService.options(**options).bind(dataclasses.asdict(cfg))
