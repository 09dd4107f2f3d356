"""Application arguments of the embedding service, and which model it serves."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ..config import Config, option

#: Environment variable naming the model when no ``model=`` application argument is given.
MODEL_ENV = "MTDP_SERVE_MODEL"


@dataclass
class ServeConfig(Config):
    """Application arguments of the embedding service (``serve run serve.app:mtdp KEY=VALUE``
    or the ``args:`` block of a Serve config YAML); text values are converted to each field's
    type and range-checked like every mtdp config."""

    model: str | None = option(None, help=(
        "student directory, MLflow URI (models:/mtdp-student/3), or teacher name; default "
        f"${MODEL_ENV}, else the newest registered 'mtdp-student' in MLflow"))
    precision: str = option("auto", choices=("auto", "fp32", "bf16"), help=(
        "arithmetic on CPU: auto (bf16 where the CPU has bf16 matrix units, AMX / "
        "AVX-512-BF16; fp32 elsewhere), fp32 or bf16"))
    pooling: str | None = option(None, choices=("masked", "reference"), help=(
        "students: masked (mean over real residues) or reference (the released MTDP model's "
        "pooling); default: the model's own"))
    device: str | None = option(None, help=(
        "cpu, cuda, cuda:1 ... (default: best found on the replica)"))
    max_sequences: int = option(512, ge=1, help=(
        "most sequences accepted in one request (more: 413)"))
    max_per_residue_values: int = option(50_000_000, ge=1, help=(
        "most per-residue numbers in one answer (residues x dim; 200 MB as float32); more: "
        "413 instead of exhausting the replica's memory"))
    max_body_bytes: int = option(32 << 20, ge=1024, help=(
        "largest request body accepted (more: 413, before it is parsed)"))
    batch_tokens: int | None = option(None, ge=1, help=(
        "padded tokens per forward pass (default 8192 on CPU, 65536 on GPU)"))
    queue_tokens: int | None = option(None, ge=1, help=(
        "tokens gathered from concurrent requests into one batch before it is length-sorted "
        "into forward passes (default 4 x batch_tokens)"))
    batch_wait_timeout_s: float = option(0.01, ge=0.0, help=(
        "how long a batch waits for more requests before it runs"))
    num_replicas: int = option(1, ge=1, help=(
        "fixed number of replicas (ignored when max_replicas is set)"))
    min_replicas: int = option(1, ge=0, help="autoscaling lower bound")
    max_replicas: int | None = option(None, ge=1, help=(
        "turn autoscaling on, up to this many replicas"))
    target_ongoing_requests: float = option(32.0, gt=0.0, help=(
        "autoscaling target of in-flight requests per replica"))
    max_ongoing_requests: int = option(256, ge=1, help=(
        "requests a replica holds at once (high, so batches can fill)"))
    num_cpus: float = option(1.0, ge=0.0, help="CPUs reserved per replica")
    num_gpus: float = option(0.0, ge=0.0, help="GPUs reserved per replica")
    torch_threads: int | None = option(None, ge=1, help=(
        "torch intra-op threads per replica (default: Ray's, = num_cpus)"))
    store: str | None = option(None, help=(
        "embedding store (folder or s3://...): per-protein embeddings of sequences the store "
        "holds for this model are read from it, new ones are computed and stored"))
    store_flush_s: float = option(1.0, ge=0.0, help=(
        "new embeddings are answered at once and committed to the store together every this "
        "many seconds (no request waits for a commit); 0: each batch commits before it "
        "answers"))
    #: Filled by :func:`mtdp.serving.app.build_app`: the tracking URI the model spec was
    #: resolved against, so a replica started elsewhere fetches ``models:/`` from the same
    #: registry.
    tracking_uri: str | None = option(None, help="MLflow tracking URI for models:/ specs")

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "ServeConfig":
        """Build from application arguments (strings from the ``serve run`` command line are
        converted to each field's type).

        Raises:
            ValueError: an unknown argument, or a value of the wrong type or out of range.
        """
        args = {k.replace("-", "_"): v for k, v in (args or {}).items()}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(args) - set(names))
        if unknown:
            raise ValueError(f"unknown mtdp serve argument(s) {unknown}; valid: {names}")
        try:
            return cls(**args)
        except ValueError as exc:
            raise ValueError(f"mtdp serve argument {exc}") from None


def resolve_model_spec(spec: str | None) -> str:
    """The model to serve: ``spec``, else ``$MTDP_SERVE_MODEL``, else the newest registered
    ``mtdp-student`` in MLflow, else the shipped ``mtdp-unirep`` — resolved on the driver
    (:func:`mtdp.models.registry.resolve`: local paths become absolute, replicas may run
    elsewhere), so a wrong model fails ``serve run`` at once with a clear message instead of a
    replica that retries forever.

    Raises:
        ValueError: a spec no loader understands.
    """
    from ..models.registry import resolve
    from ..pretrained import DEFAULT_MODEL
    from ..tracking import STUDENT_MODEL_NAME, latest_student_uri, tracking_uri

    spec = spec or os.environ.get(MODEL_ENV) or None
    if spec is None:
        # The newest student registered in MLflow, else the student shipped with the package.
        spec = latest_student_uri()
        if spec is None:
            spec = DEFAULT_MODEL
            print(f"[serve] no model=..., no ${MODEL_ENV} and no registered "
                  f"'{STUDENT_MODEL_NAME}' in MLflow at {tracking_uri()}: serving the shipped "
                  f"student {DEFAULT_MODEL}", flush=True)
        else:
            return spec
    try:
        return resolve(spec).value
    except ValueError as exc:
        raise ValueError(f"model={spec!r}: {exc}") from None
