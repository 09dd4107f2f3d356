"""The mtdp embedding service as a Ray Serve application.

    serve run serve.app:mtdp                                  # newest registered mtdp-student
    serve run serve.app:mtdp model=runs/student               # a student directory
    serve run serve.app:mtdp model=models:/mtdp-student/3 max_replicas=4
    serve deploy serve/config.yaml                            # production config

``mtdp`` is an application builder: ``KEY=VALUE`` arguments are the fields of
:class:`mtdp.serving.ServeConfig`; ``$MTDP_SERVE_MODEL`` names the model when ``model=`` is
not given. Everything else lives in :mod:`mtdp.serving`.
"""
from __future__ import annotations

from typing import Any

from ray import serve

from mtdp.serving import build_app


def mtdp(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run serve.app:mtdp [KEY=VALUE ...]``."""
    return build_app(args)
