"""Embeddings over HTTP with Ray Serve: one FastAPI ingress deployment that owns the model.

``serve run serve.app:mtdp model=PATH`` (or :func:`build_app` in Python) starts it. Endpoints:

* ``POST /embed`` — JSON ``{"sequences": [{"id": ..., "sequence": ...}], "per_residue": false,
  "truncate": true, "format": "json" | "npy", "dtype": "float32" | "float16"}``;
* ``POST /embed/fasta`` — a FASTA body, the same options as query parameters;
* ``POST /search`` — the k nearest proteins of the service's store (``store=DIR``) for each
  query (``{"sequences": [...], "k": 10}``; same input rules);
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
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve

from .. import __version__
from ..sequences import SequenceError, fit_length, iter_fasta, prepare_records, records_from_pairs
from .config import ServeConfig
from .schemas import (ERROR_RESPONSES, DType, EmbedRequest, EmbedResponse, Format, InfoResponse,
                      RequestError, SearchRequest, SearchResponse, TooLong, body_too_large,
                      encode_npy, http_error, request_error, validation_error)
from .security import BodyTooLarge, GuardMiddleware

log = logging.getLogger("mtdp.serving")

#: Name of the deployment (what ``serve status`` and a config YAML's ``deployments`` call it).
DEPLOYMENT_NAME = "MtdpEmbedder"
#: Special tokens the student/teachers add per sequence (BOS/EOS), for token accounting.
_TOKEN_OVERHEAD = 2

api = FastAPI(
    title="mtdp embeddings", version=__version__,
    description=__doc__.split("\n\n", 1)[1] if __doc__ else "",
    exception_handlers={RequestValidationError: validation_error, RequestError: request_error,
                        StarletteHTTPException: http_error, BodyTooLarge: body_too_large})
api.add_middleware(GuardMiddleware)


@dataclass
class _Job:
    """One request's prepared sequences: the unit ``@serve.batch`` queues."""

    sequences: list[str]
    per_residue: bool
    #: Padded tokens of this request, capped at the budget so no single request is "too big"
    #: for the batch queue (a big request simply forms a batch of its own).
    cost: int
    too_long: str = "truncate"


def _policy(truncate: bool, too_long: str | None) -> str:
    """The request's length policy: ``too_long`` if given, else truncate / error."""
    return too_long or ("truncate" if truncate else "error")


def _batch_cost(jobs: list[_Job]) -> int:
    return sum(j.cost for j in jobs)


class _BatchSizeWarningFilter(logging.Filter):
    """Serve warns when max_batch_size > max_ongoing_requests, assuming a batch counts
    requests; ours counts tokens, so the warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is larger than `max_ongoing_requests`" not in record.getMessage()


def public_source(source: str) -> str:
    """Where the weights came from, without the server's file paths: a local file or folder
    is named by its base name only (``models:/`` URIs, hub and registry names stay)."""
    container, _, member = source.partition("!")
    if container.startswith("/") or os.path.exists(container):
        return f"local:{os.path.basename(container.rstrip('/'))}" + (
            f"!{os.path.basename(member)}" if member else "")
    return source


# ---- the deployment --------------------------------------------------------------------------
# Everything the class uses must be defined above it: @serve.deployment serialises the class
# when this module is imported.
@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class EmbeddingService:
    """Holds one :class:`~mtdp.models.base.Embedder` and answers the HTTP API."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch

        from ..embed import default_batch_tokens
        from ..models.registry import display_identity, load_embedder

        logging.getLogger("ray.serve").addFilter(_BatchSizeWarningFilter())
        self.config = cfg = ServeConfig(**config)
        GuardMiddleware.configure(cfg.max_body_bytes)
        if cfg.tracking_uri:
            # models:/ URIs must resolve against the registry the driver saw.
            os.environ.setdefault("MLFLOW_TRACKING_URI", cfg.tracking_uri)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.embedder = load_embedder(cfg.model, device=cfg.device, pooling=cfg.pooling,
                                      precision=cfg.precision)
        self.batch_tokens = cfg.batch_tokens or default_batch_tokens(self.embedder.device)
        # Several forward passes' worth per queue batch: sorting more sequences by length
        # across requests cuts padding (tiny student, 2 busy CPUs, 100 concurrent requests:
        # 24 -> 39 proteins/s against one forward pass per queue batch).
        self.queue_tokens = cfg.queue_tokens or 4 * self.batch_tokens
        self.model_name, self.model_version = display_identity(cfg.model, self.embedder)
        from ..embed import CacheCounts

        # ModelTables by length policy (search reads them), and what _compute writes
        # through: the same tables, or their WriteBehind (cfg.store_flush_s > 0).
        self.store, self._tables, self._writers = None, {}, {}
        self.store_counts = CacheCounts()
        if cfg.store:
            from ..store import EmbeddingStore

            self.store = EmbeddingStore(cfg.store)
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
        results: list = [None] * len(jobs)
        t0 = time.perf_counter()
        groups: dict[tuple, list[int]] = {}
        for k, j in enumerate(jobs):  # one engine call per (policy, per-residue) kind
            groups.setdefault((j.too_long, j.per_residue), []).append(k)
        for (too_long, per_residue), members in groups.items():
            out = await asyncio.to_thread(self._compute, [s for k in members
                                                         for s in jobs[k].sequences],
                                          too_long, per_residue)
            emb, res = out if per_residue else (out, None)
            start = 0
            for k in members:
                stop = start + len(jobs[k].sequences)
                results[k] = (emb[start:stop], res[start:stop] if per_residue else None)
                start = stop
        log.debug("batch of %d request(s) in %.3f s", len(jobs), time.perf_counter() - t0)
        return results

    def _compute(self, seqs: list[str], too_long: str, per_residue: bool):
        """Embeddings of ``seqs``: per-residue ones computed; per-protein ones through the
        store when the service has one (stored sequences are read, new ones stored)."""
        from ..embed import embed_cached, embed_sequences

        if per_residue:
            return embed_sequences(self.embedder, seqs, batch_tokens=self.batch_tokens,
                                   per_residue=True, too_long=too_long)
        return embed_cached(self.embedder, seqs, self._store_writer(too_long),
                            batch_tokens=self.batch_tokens, too_long=too_long,
                            counts=self.store_counts)

    def _store_writer(self, too_long: str):
        """What new embeddings go through: the policy's table, or its write-behind."""
        table = self._store_table(too_long)
        if table is None or not self.config.store_flush_s:
            return table
        if too_long not in self._writers:
            from ..store.write_behind import WriteBehind

            self._writers[too_long] = WriteBehind(table, self.config.store_flush_s)
        return self._writers[too_long]

    def __del__(self) -> None:
        """Serve's graceful shutdown of the replica: commit the embeddings still waiting."""
        for writer in getattr(self, "_writers", {}).values():
            writer.close()

    def _store_table(self, too_long: str):
        if self.store is None:
            return None
        if too_long not in self._tables:
            from ..embed import model_table

            self._tables[too_long] = model_table(self.store, self.embedder, too_long)
        return self._tables[too_long]

    def _prepare(self, pairs: list[tuple[str, str]], too_long: str, source: str | None):
        """Checked, cleaned records of a request; raises :class:`RequestError` naming the
        record. Returns ``(records, truncated ids, sequences, residues embedded each)``."""
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
        try:
            _, cut = fit_length(records, max_len, too_long)
        except SequenceError as exc:
            raise RequestError(
                422, "sequence_too_long", f"{exc} — this request has truncate=false; send "
                f"truncate=true to embed its first {max_len} residues", exc.record,
                exc.seq_id) from None
        # Whole sequences go on: the engine applies the length policy, the store keys them.
        seqs = [r.sequence for r in records]
        lengths = [len(q) if too_long == "window" else min(len(q), max_len) for q in seqs]
        return records, [r.id for r in cut], seqs, lengths

    def _cost(self, lengths: list[int]) -> int:
        return min(sum(n + _TOKEN_OVERHEAD for n in lengths), self.queue_tokens)

    async def _embed(self, pairs: list[tuple[str, str]], *, per_residue: bool, too_long: str,
                     fmt: str, dtype: str, source: str | None) -> Response:
        records, truncated, seqs, lengths = self._prepare(pairs, too_long, source)
        if per_residue:
            values = sum(lengths) * self.embedder.dim
            if values > self.config.max_per_residue_values:
                raise RequestError(413, "per_residue_too_large",
                                   f"per-residue output would hold {values:,} numbers "
                                   f"({sum(lengths):,} residues x dim "
                                   f"{self.embedder.dim}); the limit is "
                                   f"{self.config.max_per_residue_values:,}: send fewer "
                                   "sequences")
        emb, res = await self._embed_jobs(_Job(seqs, per_residue, self._cost(lengths),
                                               too_long))
        body: dict[str, Any] = {
            "model": self.model_name, "model_version": self.model_version,
            "dim": self.embedder.dim, "ids": [r.id for r in records],
            "lengths": lengths, "truncated": truncated, "format": fmt}
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
    @api.post("/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES,
              summary="Embed proteins given as JSON")
    async def embed(self, req: EmbedRequest) -> Response:
        """Per-protein (and optionally per-residue) embeddings of ``sequences``, in order."""
        pairs = [(s.id, s.sequence) for s in req.sequences]
        return await self._embed(pairs, per_residue=req.per_residue,
                                 too_long=_policy(req.truncate, req.too_long),
                                 fmt=req.format, dtype=req.dtype, source=None)

    @api.post("/embed/fasta", response_model=EmbedResponse, responses=ERROR_RESPONSES,
              summary="Embed the proteins of a FASTA body",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "text/x-fasta": {"schema": {"type": "string"}},
                  "text/plain": {"schema": {"type": "string"}}}}})
    async def embed_fasta(self, request: Request, per_residue: bool = False,
                          truncate: bool = True, too_long: TooLong | None = Query(None),
                          format: Format = Query("json"),
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
                                 per_residue=per_residue, too_long=_policy(truncate, too_long),
                                 fmt=format,
                                 dtype=dtype, source=None)

    @api.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES,
              summary="The nearest stored proteins of each query")
    async def search(self, req: SearchRequest) -> Response:
        """Embeds the queries (through the store) and returns, per query, the ``k`` nearest
        proteins of the store's runs, as ``mtdp search`` does."""
        from ..search.query import search_plan, search_vectors
        from ..store import StoreError

        if self.store is None:
            raise RequestError(409, "no_store", "this service has no embedding store to search"
                               " (start it with store=DIR, a store holding this model's "
                               "embeddings)")
        too_long = _policy(req.truncate, req.too_long)
        records, truncated, seqs, lengths = self._prepare(
            [(s.id, s.sequence) for s in req.sequences], too_long, None)
        emb, _ = await self._embed_jobs(_Job(seqs, False, self._cost(lengths), too_long))
        table = self._store_table(too_long)
        metric, state, used = search_plan(table, req.metric, req.exact)
        try:
            hits = await asyncio.to_thread(
                search_vectors, self.store, table, [r.id for r in records], emb, req.k,
                req.runs, metric=metric, exact=req.exact, state=state)
        except StoreError as exc:
            raise RequestError(409, "store_cannot_search", str(exc)) from None
        body = {"model": self.model_name, "metric": metric, "search": used,
                "truncated": truncated,
                "hits": [{"query": h.query, "rank": h.rank, "hit_id": h.hit_id,
                          "distance": h.distance, "other_ids": h.other_ids} for h in hits]}
        return Response(json.dumps(body), media_type="application/json")

    @api.get("/healthz", summary="Liveness: 200 when the model is loaded")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok", "model": self.model_name}

    @api.get("/info", response_model=InfoResponse, summary="The served model and limits")
    def info(self) -> InfoResponse:
        e = self.embedder
        return InfoResponse(
            model=self.model_name, model_version=self.model_version,
            source=public_source(e.source),
            mtdp_version=__version__, dim=e.dim, max_len=e.max_len, device=str(e.device),
            precision=e.precision,
            parameters=e.num_parameters(), pretrained=e.pretrained,
            max_sequences=self.config.max_sequences, batch_tokens=self.batch_tokens,
            queue_tokens=self.queue_tokens,
            truncation=f"sequences longer than {e.max_len} residues are cut to their first "
                       f"{e.max_len} (truncate=false rejects them with 422; too_long=window "
                       "embeds overlapping windows)",
            store=self.store is not None, store_computed=self.store_counts.new,
            store_reused=self.store_counts.reused,
            store_pending=sum(w.pending() for w in self._writers.values()))
