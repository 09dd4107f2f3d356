"""Embeddings over HTTP with Ray Serve: one FastAPI ingress deployment that owns the model.

``serve run serve.app:mtdp model=PATH`` (or :func:`build_app` in Python) starts it. Endpoints:

* ``POST /embed`` — JSON ``{"sequences": [{"id": ..., "sequence": ...}], "per_residue": false,
  "truncate": true, "format": "json" | "npy", "dtype": "float32" | "float16"}``;
* ``POST /embed/fasta`` — a FASTA body, the same options as query parameters;
* ``GET /healthz``, ``GET /info``; OpenAPI docs at ``/docs`` and ``/openapi.json``.

Requests are batched *across* clients with ``@serve.batch``: each request's sequences are one
queue item whose size is its padded token count, so a batch gathers requests up to one token
budget; :func:`mtdp.embed.embed_sequences` then length-sorts all of them into token-budget
forward passes. Results are split back per request, in request order.

Input rules are those of :mod:`mtdp.sequences` (the CLI's): amino-acid letters only (lower
case upper-cased, ``U Z O B`` → ``X``), no empty sequence, unique ids. Truncation policy:
by default a sequence longer than the model's ``max_len`` is cut to its first ``max_len``
residues (as ``mtdp embed`` does) and its id is listed in the response's ``truncated``;
with ``truncate=false`` such a request is rejected (422) instead. Bad input always gets a 4xx
whose message names the record (1-based) and id: 400 malformed JSON/FASTA, 413 too many
sequences (or a per-residue answer too large), 422 invalid/empty/over-long sequences,
duplicate ids or missing fields.
"""
# No `from __future__ import annotations`: Serve ships the ingress class to replicas by value,
# and FastAPI must see real types (not strings to resolve in module globals) on its endpoints.
import asyncio
import base64
import dataclasses
import io
import json
import logging
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve

from . import __version__
from .sequences import (HUGE_SEQUENCE, SequenceError, iter_fasta, prepare_records,
                        records_from_pairs)

log = logging.getLogger("mtdp.serving")

#: Environment variable naming the model when no ``model=`` application argument is given.
MODEL_ENV = "MTDP_SERVE_MODEL"
#: Name of the deployment (what ``serve status`` and a config YAML's ``deployments`` call it).
DEPLOYMENT_NAME = "MtdpEmbedder"
#: Special tokens the student/teachers add per sequence (BOS/EOS), for token accounting.
_TOKEN_OVERHEAD = 2


# ---- configuration ---------------------------------------------------------------------------
@dataclass
class ServeConfig:
    """Application arguments of the embedding service (``serve run serve.app:mtdp KEY=VALUE``
    or the ``args:`` block of a Serve config YAML)."""

    model: str | None = field(default=None, metadata={"help": (
        "student directory, MLflow URI (models:/mtdp-student/3), or teacher name; default "
        f"${MODEL_ENV}, else the newest registered 'mtdp-student' in MLflow")})
    device: str | None = field(default=None, metadata={
        "help": "cpu, cuda, cuda:1 ... (default: best found on the replica)"})
    max_sequences: int = field(default=512, metadata={
        "help": "most sequences accepted in one request (more: 413)"})
    max_per_residue_values: int = field(default=50_000_000, metadata={
        "help": "most per-residue numbers in one answer (residues x dim; 200 MB as float32); "
                "more: 413 instead of exhausting the replica's memory"})
    batch_tokens: int | None = field(default=None, metadata={
        "help": "padded tokens per forward pass (default 8192 on CPU, 65536 on GPU)"})
    queue_tokens: int | None = field(default=None, metadata={
        "help": "tokens gathered from concurrent requests into one batch before it is "
                "length-sorted into forward passes (default 4 x batch_tokens)"})
    batch_wait_timeout_s: float = field(default=0.01, metadata={
        "help": "how long a batch waits for more requests before it runs"})
    num_replicas: int = field(default=1, metadata={
        "help": "fixed number of replicas (ignored when max_replicas is set)"})
    min_replicas: int = field(default=1, metadata={"help": "autoscaling lower bound"})
    max_replicas: int | None = field(default=None, metadata={
        "help": "turn autoscaling on, up to this many replicas"})
    target_ongoing_requests: float = field(default=32.0, metadata={
        "help": "autoscaling target of in-flight requests per replica"})
    max_ongoing_requests: int = field(default=256, metadata={
        "help": "requests a replica holds at once (high, so batches can fill)"})
    num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved per replica"})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs reserved per replica"})
    torch_threads: int | None = field(default=None, metadata={
        "help": "torch intra-op threads per replica (default: Ray's, = num_cpus)"})
    #: Filled by :func:`build_app`: the tracking URI the model spec was resolved against, so a
    #: replica started elsewhere fetches ``models:/`` from the same registry.
    tracking_uri: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "ServeConfig":
        """Build from application arguments; string values (from the ``serve run`` command
        line) are converted to each field's type.

        Raises:
            ValueError: an unknown argument or a value of the wrong type.
        """
        args = {k.replace("-", "_"): v for k, v in (args or {}).items()}
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(args) - set(names))
        if unknown:
            raise ValueError(f"unknown mtdp serve argument(s) {unknown}; valid: {names}")
        values: dict[str, Any] = {}
        for key, value in args.items():
            if isinstance(value, str):
                try:
                    value = _from_text(hints[key], value)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"mtdp serve argument {key}={value!r}: {exc}") from exc
            values[key] = value
        cfg = cls(**values)
        if cfg.max_sequences < 1:
            raise ValueError("max_sequences must be >= 1")
        return cfg


def _from_text(tp: Any, text: str) -> Any:
    """Convert a command-line string to type ``tp`` (``X | None`` accepts none/null/empty)."""
    options = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if len(options) < len(typing.get_args(tp)) and text.strip().lower() in ("", "none", "null"):
        return None
    base = options[0]
    if base is bool:
        low = text.strip().lower()
        if low not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"expected true/false, got {text!r}")
        return low in ("1", "true", "yes", "on")
    return base(text)


def resolve_model_spec(spec: str | None) -> str:
    """The model to serve: ``spec``, else ``$MTDP_SERVE_MODEL``, else the newest registered
    ``mtdp-student`` in MLflow. Relative paths become absolute (replicas may run elsewhere).

    Checked here, on the driver, so a wrong model fails ``serve run`` at once with a clear
    message instead of a replica that retries forever.

    Raises:
        ValueError: nothing to serve, or a spec no loader understands.
    """
    from . import teachers
    from .student import is_student_dir
    from .tracking import STUDENT_MODEL_NAME, latest_student_uri, tracking_uri

    spec = spec or os.environ.get(MODEL_ENV) or None
    if spec is None:
        spec = latest_student_uri()
        if spec is None:
            raise ValueError(
                f"no model to serve: no model=... argument, no ${MODEL_ENV}, and no registered "
                f"'{STUDENT_MODEL_NAME}' model in MLflow at {tracking_uri()}. Train and register "
                "a student with `python jobs/distill.py`, or pass one: `serve run "
                "serve.app:mtdp model=PATH/TO/student` (also models:/mtdp-student/N or a teacher "
                "name; `mtdp student init --preset tiny DIR` writes an untrained one)")
        return spec
    if spec.startswith(("models:/", "runs:/", "mlflow:")):
        return spec
    path = spec[len("student:"):] if spec.startswith("student:") else spec
    if is_student_dir(path) or os.path.exists(path):
        return str(Path(path).resolve())
    if spec.startswith("student:"):
        raise ValueError(f"model={spec!r}: {path} is not an mtdp student directory "
                         "(config.json + model.safetensors)")
    if spec in teachers.REGISTRY:
        return spec  # loading a teacher here would cost minutes; the name is known to work
    # Anything else (a no-weight baseline, a typo): try it now; load_embedder names what is
    # accepted when nothing matches.
    from .embedder import load_embedder

    load_embedder(spec, device="cpu")
    return spec


# ---- request / response schemas --------------------------------------------------------------
Format = Literal["json", "npy"]
DType = Literal["float32", "float16"]


class SequenceIn(BaseModel):
    """One protein to embed."""

    id: str = Field(min_length=1, description="identifier, unique within the request")
    sequence: str = Field(description="amino-acid letters (upper or lower case)")


class EmbedRequest(BaseModel):
    """Body of ``POST /embed``."""

    sequences: list[SequenceIn] = Field(description="proteins to embed, in output order")
    per_residue: bool = Field(False, description="also return one vector per residue")
    truncate: bool = Field(True, description=(
        "cut sequences longer than the model's max length to their first max_len residues "
        "(listed in `truncated`); false: reject them with 422"))
    format: Format = Field("json", description=(
        "`json`: embeddings as nested float lists; `npy`: base64 of a .npy array (compact)"))
    dtype: DType = Field("float32", description="dtype of `npy` arrays (float16 halves the size)")


class EmbedResponse(BaseModel):
    """Embeddings for one request, rows in request order."""

    model: str
    model_version: str
    dim: int
    ids: list[str]
    lengths: list[int] = Field(description="residues embedded per protein (after truncation)")
    truncated: list[str] = Field(description="ids of sequences cut to the model's max length")
    format: Format
    embeddings: list[list[float]] | None = Field(None, description="format=json: [N][dim]")
    embeddings_npy: str | None = Field(None, description="format=npy: base64 .npy [N, dim]")
    per_residue: list[list[list[float]]] | None = Field(None, description="json: [N][L_i][dim]")
    per_residue_npy: list[str] | None = Field(None, description="npy: base64 .npy [L_i, dim] each")


class InfoResponse(BaseModel):
    """What the service runs."""

    model: str
    model_version: str
    source: str
    mtdp_version: str
    dim: int
    max_len: int
    device: str
    parameters: int
    pretrained: bool
    max_sequences: int
    batch_tokens: int
    queue_tokens: int
    truncation: str


class ErrorResponse(BaseModel):
    """A rejected request: what is wrong and, for sequence problems, which record."""

    error: str
    detail: str
    record: int | None = None
    id: str | None = None


class RequestError(Exception):
    """Bad input: becomes a JSON 4xx response (never a 500)."""

    def __init__(self, status: int, error: str, detail: str, record: int | None = None,
                 seq_id: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.record, self.seq_id = record, seq_id

    @classmethod
    def from_sequence_error(cls, exc: SequenceError, status: int = 422) -> "RequestError":
        return cls(status, "invalid_sequence", str(exc), exc.record, exc.seq_id)

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=self.error, detail=self.detail, record=self.record,
                             id=self.seq_id)
        return JSONResponse(body.model_dump(), status_code=self.status)


def _describe_loc(loc: tuple) -> str:
    """``("body", "sequences", 2, "id")`` → ``record 3 (sequences[2]), field 'id'``."""
    parts = [p for p in loc if p != "body"]
    if len(parts) >= 2 and parts[0] == "sequences" and isinstance(parts[1], int):
        rest = ".".join(str(p) for p in parts[2:])
        return f"record {parts[1] + 1} (sequences[{parts[1]}])" + (
            f", field {rest!r}" if rest else "")
    return ".".join(str(p) for p in parts) or "body"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in our format: 400 for unparsable JSON, else 422 naming
    the record and field."""
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return RequestError(400, "malformed_json",
                                f"request body is not valid JSON: {ctx.get('error', err['msg'])}"
                                ).response()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    record = loc[2] + 1 if len(loc) > 2 and loc[1] == "sequences" and isinstance(
        loc[2], int) else None
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return RequestError(422, "invalid_request", f"{_describe_loc(loc)}: {first['msg']}{more}",
                        record).response()


async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    return exc.response()


api = FastAPI(
    title="mtdp embeddings", version=__version__,
    description=__doc__.split("\n\n", 1)[1] if __doc__ else "",
    exception_handlers={RequestValidationError: _validation_error, RequestError: _request_error})

_ERRORS = {400: {"model": ErrorResponse, "description": "malformed JSON / FASTA"},
           413: {"model": ErrorResponse, "description": "too many sequences in one request"},
           422: {"model": ErrorResponse, "description": "invalid, empty or over-long sequence, "
                                                        "duplicate id, missing field"}}


# ---- encoding helpers ------------------------------------------------------------------------
def encode_npy(array: np.ndarray, dtype: str = "float32") -> str:
    """Base64 of ``array`` saved as ``.npy`` in ``dtype`` (the ``format=npy`` payload)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_npy(text: str) -> np.ndarray:
    """Inverse of :func:`encode_npy`, for clients: base64 ``.npy`` → array."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


@dataclass
class _Job:
    """One request's prepared sequences: the unit ``@serve.batch`` queues."""

    sequences: list[str]
    per_residue: bool
    #: Padded tokens of this request, capped at the budget so no single request is "too big"
    #: for the batch queue (a big request simply forms a batch of its own).
    cost: int


def _batch_cost(jobs: list[_Job]) -> int:
    return sum(j.cost for j in jobs)


class _BatchSizeWarningFilter(logging.Filter):
    """Serve warns when max_batch_size > max_ongoing_requests, assuming a batch counts
    requests; ours counts tokens, so the warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is larger than `max_ongoing_requests`" not in record.getMessage()


def _model_identity(spec: str, embedder) -> tuple[str, str]:
    """A display name and version: ``models:/NAME/V`` → (NAME, V); a student directory →
    (its folder name, sha256 of its weights, 12 hex); a teacher → (its name, its source)."""
    from .embedder import sha256_file
    from .student import WEIGHTS_FILE, is_student_dir

    if spec.startswith("models:/"):
        parts = spec[len("models:/"):].split("/")
        return parts[0], (parts[1] if len(parts) > 1 else "latest")
    if spec.startswith(("runs:/", "mlflow:")):
        return spec, spec
    if is_student_dir(spec):
        return Path(spec).name, sha256_file(Path(spec) / WEIGHTS_FILE)[:12]
    return embedder.name, embedder.source or "unknown"


# ---- the deployment --------------------------------------------------------------------------
# Everything the class uses must be defined above it: @serve.deployment serialises the class
# when this module is imported.
@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class EmbeddingService:
    """Holds one :class:`~mtdp.embedder.Embedder` and answers the HTTP API."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        from .embed import default_batch_tokens
        from .embedder import load_embedder

        logging.getLogger("ray.serve").addFilter(_BatchSizeWarningFilter())
        self.config = cfg = ServeConfig(**config)
        if cfg.tracking_uri:
            # models:/ URIs must resolve against the registry the driver saw.
            os.environ.setdefault("MLFLOW_TRACKING_URI", cfg.tracking_uri)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.embedder = load_embedder(cfg.model, device=cfg.device)
        self.batch_tokens = cfg.batch_tokens or default_batch_tokens(self.embedder.device)
        # Several forward passes' worth per queue batch: sorting more sequences by length
        # across requests cuts padding (tiny student, 2 busy CPUs, 100 concurrent requests:
        # 24 -> 39 proteins/s against one forward pass per queue batch).
        self.queue_tokens = cfg.queue_tokens or 4 * self.batch_tokens
        self.model_name, self.model_version = _model_identity(cfg.model, self.embedder)
        self._embed_jobs.set_max_batch_size(self.queue_tokens)
        self._embed_jobs.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        log.info("mtdp serving %s (version %s, dim %d, max_len %d) on %s", self.model_name,
                 self.model_version, self.embedder.dim, self.embedder.max_len,
                 self.embedder.device)

    def check_health(self) -> None:
        """Serve's replica health probe: the model must be loaded."""
        if getattr(self, "embedder", None) is None:
            raise RuntimeError("model not loaded")

    # -- batching --
    @serve.batch(max_batch_size=8192, batch_wait_timeout_s=0.01, batch_size_fn=_batch_cost)
    async def _embed_jobs(self, jobs: list[_Job]) -> list[tuple[np.ndarray, list | None]]:
        """Embed the sequences of several requests together (token-budget batches), then hand
        each request its rows. Runs in a thread so the event loop keeps taking requests."""
        from .embed import embed_sequences

        seqs = [s for j in jobs for s in j.sequences]
        per_residue = any(j.per_residue for j in jobs)
        t0 = time.perf_counter()
        out = await asyncio.to_thread(embed_sequences, self.embedder, seqs,
                                      batch_tokens=self.batch_tokens, per_residue=per_residue)
        log.debug("batch of %d request(s), %d sequences, %d residues in %.3f s", len(jobs),
                  len(seqs), sum(len(s) for s in seqs), time.perf_counter() - t0)
        emb, res = out if per_residue else (out, None)
        results, start = [], 0
        for j in jobs:
            stop = start + len(j.sequences)
            results.append((emb[start:stop], res[start:stop] if j.per_residue else None))
            start = stop
        return results

    async def _embed(self, pairs: list[tuple[str, str]], *, per_residue: bool, truncate: bool,
                     fmt: str, dtype: str, source: str | None) -> Response:
        if not pairs:
            raise RequestError(422, "no_sequences", "the request holds no sequences")
        if len(pairs) > self.config.max_sequences:
            raise RequestError(413, "too_many_sequences",
                               f"{len(pairs)} sequences in one request; the limit is "
                               f"{self.config.max_sequences} (split the request)")
        max_len = self.embedder.max_len
        try:
            records = list(prepare_records(records_from_pairs(pairs, source=source),
                                           max_len=None))
        except SequenceError as exc:
            raise RequestError.from_sequence_error(exc) from None
        truncated = []
        for rec in records:
            if len(rec.sequence) > max_len:
                if not truncate:
                    raise RequestError(
                        422, "sequence_too_long",
                        f"record {rec.index}, id {rec.id!r}: sequence of {len(rec.sequence)} "
                        f"residues exceeds the model's max length {max_len} (truncate=false; "
                        "send truncate=true to embed its first max_len residues)",
                        rec.index, rec.id)
                rec.sequence = rec.sequence[:max_len]
                truncated.append(rec.id)
        seqs = [r.sequence for r in records]
        if per_residue:
            values = sum(len(s) for s in seqs) * self.embedder.dim
            if values > self.config.max_per_residue_values:
                raise RequestError(413, "per_residue_too_large",
                                   f"per-residue output would hold {values:,} numbers "
                                   f"({sum(len(s) for s in seqs):,} residues x dim "
                                   f"{self.embedder.dim}); the limit is "
                                   f"{self.config.max_per_residue_values:,}: send fewer "
                                   "sequences")
        cost = min(sum(len(s) + _TOKEN_OVERHEAD for s in seqs), self.queue_tokens)
        emb, res = await self._embed_jobs(_Job(seqs, per_residue, cost))
        body: dict[str, Any] = {
            "model": self.model_name, "model_version": self.model_version,
            "dim": self.embedder.dim, "ids": [r.id for r in records],
            "lengths": [len(s) for s in seqs], "truncated": truncated, "format": fmt}
        if fmt == "npy":
            body["embeddings_npy"] = encode_npy(emb, dtype)
            if per_residue:
                body["per_residue_npy"] = [encode_npy(r, dtype) for r in res]
        else:
            body["embeddings"] = emb.tolist()
            if per_residue:
                body["per_residue"] = [r.tolist() for r in res]
        # Built by hand: validating thousands of floats through the response model is slow.
        return Response(json.dumps(body), media_type="application/json")

    # -- endpoints --
    @api.post("/embed", response_model=EmbedResponse, responses=_ERRORS,
              summary="Embed proteins given as JSON")
    async def embed(self, req: EmbedRequest) -> Response:
        """Per-protein (and optionally per-residue) embeddings of ``sequences``, in order."""
        pairs = [(s.id, s.sequence) for s in req.sequences]
        return await self._embed(pairs, per_residue=req.per_residue, truncate=req.truncate,
                                 fmt=req.format, dtype=req.dtype, source=None)

    @api.post("/embed/fasta", response_model=EmbedResponse, responses=_ERRORS,
              summary="Embed the proteins of a FASTA body",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "text/x-fasta": {"schema": {"type": "string"}},
                  "text/plain": {"schema": {"type": "string"}}}}})
    async def embed_fasta(self, request: Request, per_residue: bool = False,
                          truncate: bool = True, format: Format = Query("json"),
                          dtype: DType = Query("float32")) -> Response:
        """The body is FASTA text (id = first word of each header); options as query
        parameters, same meaning as in ``POST /embed``."""
        raw = await request.body()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(400, "malformed_fasta",
                               f"body is not UTF-8 text (byte {exc.start})") from None
        try:
            records = list(iter_fasta(io.StringIO(text), name="request body"))
        except SequenceError as exc:
            raise RequestError(400, "malformed_fasta", str(exc), exc.record,
                               exc.seq_id) from None
        if not records:
            raise RequestError(400, "malformed_fasta",
                               "no FASTA records in the body (expected '>id' header lines)")
        if len(records) > self.config.max_sequences:
            raise RequestError(413, "too_many_sequences",
                               f"{len(records)} sequences in one request; the limit is "
                               f"{self.config.max_sequences} (split the request)")
        return await self._embed([(r.id, r.sequence) for r in records],
                                 per_residue=per_residue, truncate=truncate, fmt=format,
                                 dtype=dtype, source=None)

    @api.get("/healthz", summary="Liveness: 200 when the model is loaded")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok", "model": self.model_name}

    @api.get("/info", response_model=InfoResponse, summary="The served model and limits")
    def info(self) -> InfoResponse:
        e = self.embedder
        return InfoResponse(
            model=self.model_name, model_version=self.model_version, source=e.source,
            mtdp_version=__version__, dim=e.dim, max_len=e.max_len, device=str(e.device),
            parameters=e.num_parameters(), pretrained=e.pretrained,
            max_sequences=self.config.max_sequences, batch_tokens=self.batch_tokens,
            queue_tokens=self.queue_tokens,
            truncation=f"sequences longer than {e.max_len} residues are cut to their first "
                       f"{e.max_len} (truncate=false rejects them with 422)")


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: ``serve run serve.app:mtdp model=PATH max_replicas=4 ...``.

    ``args`` are :class:`ServeConfig` fields (strings from the command line are converted).
    The model spec is resolved and checked here, so mistakes fail fast.
    """
    from .tracking import tracking_uri

    cfg = ServeConfig.from_args(args)
    cfg.model = resolve_model_spec(cfg.model)
    if cfg.model.startswith(("models:/", "runs:/", "mlflow:")):
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
