"""What a stored embedding is keyed by: the SHA-256 of the prepared sequence, within a table
per model identity (weights, length limit and policy, pooling)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

from ..io import sha256_file


class Describable(Protocol):
    """What keying reads of a model (:class:`mtdp.models.base.Embedder` has it): declared
    here, not imported, so the store does not depend on the models (which embed through
    :mod:`mtdp.embed`, which keys through this module)."""

    def describe(self) -> dict[str, Any]: ...


def seq_hash(sequence: str) -> str:
    """Hex SHA-256 of a prepared sequence (:func:`mtdp.sequences.prepare`): the same protein
    under any id, in any file, has one key. The embedding job, ``mtdp embed`` and Serve key
    whole sequences (the model's length policy applies inside the table's identity);
    precompute keys the sequences it cut to its ``max_len`` (their vectors are the same)."""
    return hashlib.sha256(sequence.encode("ascii")).hexdigest()


def store_identity(embedder: Describable, too_long: str = "truncate",
                   pooling: str | None = None, max_len: int | None = None) -> dict[str, Any]:
    """What makes a model's stored vectors what they are: its class, dimension, length limit,
    the policy for longer sequences, the pooling, and its weights (the checkpoint's SHA-256,
    the student directory's weight files, or a fingerprint of its parameters; a no-weight
    baseline by its source). The same weights under another name or path share a table.
    ``max_len`` lowers the length limit below the model's (sequences cut, or windowed, there);
    it never raises it."""
    info = fingerprint(embedder)
    pooling = pooling or getattr(embedder, "pooling", "masked")
    weights = info.get("sha256") or info.get("weights_sha256") or info.get("weights_fingerprint")
    limit = info["max_len"] if max_len is None else min(max_len, info["max_len"])
    identity = {"class": info["class"], "dim": info["dim"], "max_len": limit,
                "too_long": too_long, "pooling": pooling,
                "weights": weights or f"{info['class']}:{info.get('source', '')}"}
    layer = getattr(embedder, "repr_layer", None)
    if layer is not None:  # a layer before the last (the last keeps earlier stores' key)
        identity["layer"] = layer
    return identity


def identity_key(identity: dict[str, Any]) -> str:
    """The 16-hex key of an identity (the model's table is ``emb_<key>``)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(embedder: Describable) -> dict[str, Any]:
    """What makes an embedder's output unique: its description plus a weight fingerprint
    (checkpoint files are hashed by :meth:`~Embedder.describe`; student directories by their
    weight files; random-init and hub models by a digest of a few parameter tensors)."""
    info = dict(embedder.describe())
    src = info.get("source") or ""
    module = getattr(embedder, "model", None)
    if src and os.path.isdir(src) and hasattr(module, "state_dict"):
        # The loaded tensors, not the files' bytes: safetensors keeps one name of a tied
        # pair, and which one can differ between two saves of the same weights.
        import torch

        h = hashlib.sha256()
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                     .tobytes())
        info["weights_sha256"] = h.hexdigest()
    elif src and os.path.isdir(src):
        h = hashlib.sha256()
        for p in sorted(Path(src).glob("*.safetensors")) + sorted(Path(src).glob("*.bin")):
            h.update(p.name.encode())
            h.update(bytes.fromhex(sha256_file(p)))
        info["weights_sha256"] = h.hexdigest()
    if module is not None and hasattr(module, "parameters") and "sha256" not in info:
        params = list(module.parameters())
        h = hashlib.sha256()
        for t in (params[:2] + params[-2:]):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        info["weights_fingerprint"] = h.hexdigest()
    return info


def fingerprint_key(identity: dict[str, Any]) -> str:
    """Short stable key of a :func:`fingerprint`."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]

