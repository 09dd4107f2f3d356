"""The HTTP API's request and response schemas, its error format, and the ``.npy`` payload
encoding (pydantic models: FastAPI validates requests and documents them at ``/docs``)."""
# No `from __future__ import annotations`: FastAPI must see real types on the models.
import base64
import io
from typing import Literal

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..sequences import SequenceError

Format = Literal["json", "npy"]
TooLong = Literal["truncate", "error", "window"]
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
    too_long: TooLong | None = Field(None, description=(
        "overrides `truncate`: `truncate` cuts, `error` rejects (422), `window` embeds "
        "overlapping windows of the model's max length and returns their length-weighted "
        "mean (per-residue: stitched)"))
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


class SearchRequest(BaseModel):
    """Body of ``POST /search``: the query proteins (same rules as ``POST /embed``)."""

    sequences: list[SequenceIn] = Field(description="query proteins")
    k: int = Field(10, ge=1, le=1000, description="hits per query")
    runs: list[str] | None = Field(None, description=(
        "search only proteins of these input runs of the store (default: every run)"))
    metric: Literal["cosine", "euclidean"] | None = Field(None, description=(
        "distance (default: the index's metric, else cosine)"))
    exact: bool = Field(False, description="brute force, ignoring any index")
    truncate: bool = Field(True, description="as in `POST /embed`")
    too_long: TooLong | None = Field(None, description="as in `POST /embed`")


class SearchHit(BaseModel):
    """One neighbour of a query."""

    query: str
    rank: int
    hit_id: str
    distance: float = Field(description="cosine: 1 - cosine similarity; euclidean: L2")
    other_ids: list[str] = Field(description="other ids with the hit's very sequence")


class SearchResponse(BaseModel):
    """Hits of every query, in query order, nearest first."""

    model: str
    metric: str
    search: str = Field(description="the index kind used, or `exact`")
    truncated: list[str]
    hits: list[SearchHit]


class InfoResponse(BaseModel):
    """What the service runs."""

    model: str
    model_version: str
    source: str
    mtdp_version: str
    dim: int
    max_len: int
    device: str
    precision: str = Field("fp32", description="arithmetic of the forward pass on CPU")
    parameters: int
    pretrained: bool
    max_sequences: int
    batch_tokens: int
    queue_tokens: int
    truncation: str
    store: bool = Field(False, description="whether an embedding store answers repeats")
    store_computed: int = Field(0, description="distinct sequences computed and stored")
    store_reused: int = Field(0, description="proteins answered from the store")
    store_pending: int = Field(0, description=(
        "embeddings answered but not committed to the store yet (store_flush_s)"))


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


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
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


async def request_error(request: Request, exc: RequestError) -> JSONResponse:
    return exc.response()


ERROR_RESPONSES = {400: {"model": ErrorResponse, "description": "malformed JSON / FASTA"},
           409: {"model": ErrorResponse, "description": "POST /search on a service without "
                                                        "a store, or a store without runs"},
           413: {"model": ErrorResponse, "description": "too many sequences in one request"},
           422: {"model": ErrorResponse, "description": "invalid, empty or over-long sequence, "
                                                        "duplicate id, missing field"}}


def encode_npy(array: np.ndarray, dtype: str = "float32") -> str:
    """Base64 of ``array`` saved as ``.npy`` in ``dtype`` (the ``format=npy`` payload)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_npy(text: str) -> np.ndarray:
    """Inverse of :func:`encode_npy`, for clients: base64 ``.npy`` → array."""
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


#: Error names of plain HTTP errors (FastAPI's own 400/404/405 ...), in the documented format.
_HTTP_ERRORS = {400: "bad_request", 401: "unauthorized", 404: "not_found",
                405: "method_not_allowed", 413: "body_too_large"}


async def http_error(request: Request, exc) -> JSONResponse:
    """Starlette/FastAPI ``HTTPException`` (unknown path, wrong method, a body FastAPI could not
    parse — e.g. JSON nested thousands deep) in the documented error format."""
    detail = str(exc.detail)
    if detail == "There was an error parsing the body":
        detail = ("the request body could not be parsed (not JSON, or nested too deeply to "
                  "parse)")
    return RequestError(exc.status_code, _HTTP_ERRORS.get(exc.status_code, "http_error"),
                        detail).response()


async def body_too_large(request: Request, exc) -> JSONResponse:
    """A streamed body that passed the size limit (:mod:`.security`)."""
    from .security import GuardMiddleware

    return RequestError(413, "body_too_large", f"the request body has more than "
                        f"{GuardMiddleware.max_body:,} bytes, the limit (split the request)"
                        ).response()
