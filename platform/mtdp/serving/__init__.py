"""Embeddings over HTTP with Ray Serve: :mod:`.config` (application arguments, the model to
serve), :mod:`.schemas` (requests, responses, errors), :mod:`.service` (the deployment and
its endpoints), :mod:`.app` (:func:`build_app`, the application builder)."""
from .app import build_app
from .config import MODEL_ENV, ServeConfig, resolve_model_spec
from .schemas import decode_npy, encode_npy
from .service import DEPLOYMENT_NAME

__all__ = ["DEPLOYMENT_NAME", "MODEL_ENV", "ServeConfig", "build_app", "decode_npy", "encode_npy", "resolve_model_spec"]
