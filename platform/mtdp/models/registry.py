"""The one place a ``--model`` string becomes a model: :func:`resolve` classifies a spec
(without loading anything), :func:`load_embedder` builds it, :func:`display_identity` names
it for users, :func:`fingerprint` identifies its outputs for caches and stores.

Specs, tried in this order:

* an MLflow model URI: ``models:/NAME/VERSION``, ``runs:/<id>/student`` (``mlflow:URI``);
* a student shipped with the package by name (``mtdp-unirep``, :mod:`mtdp.pretrained`);
* a student directory (``config.json`` + ``model.safetensors``), optionally ``student:PATH``;
* the released MTDP model: ``mtdp-paper:/path/UniProtKB.bin``, or ``mtdp-paper`` (downloaded
  once into the cache), see :mod:`.mtdp_paper`;
* a teacher name from the registry (``esm2_t33_650M_UR50D``, ``prot_t5_xl_uniref50``,
  ``unirep1900``, ``tiny-random-esm2`` ...), see ``mtdp teachers``;
* a local teacher checkpoint: an ESM-2 ``.pt`` file or a ProtT5 (``T5EncoderModel``) directory;
* a no-weight baseline: ``aac``, ``kmer1``..``kmer3``, ``random-student[:preset]``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..io import sha256_file
from ..pretrained import SHIPPED, shipped_path
from . import baselines, teachers
from .base import Embedder, best_device
from .student import WEIGHTS_FILE, StudentEmbedder, is_student_dir, load_student

#: Prefixes of model URIs resolved through MLflow.
MLFLOW_PREFIXES = ("models:/", "runs:/", "mlflow:")
KINDS = ("mlflow", "student", "mtdp-paper", "teacher", "checkpoint", "baseline")


@dataclass(frozen=True)
class ModelSpec:
    """A classified model spec: ``kind`` (one of :data:`KINDS`) and ``value`` (the URI, the
    absolute path of a local student/checkpoint, or the registered name)."""

    kind: str
    value: str

    def __str__(self) -> str:
        return self.value


def accepted_forms() -> str:
    """What a model spec may be (for error messages)."""
    return ("a shipped student (" + ", ".join(SHIPPED) + "), a student directory, an MLflow "
            "URI (models:/NAME/VERSION), the released MTDP "
            "model (mtdp-paper:/path/UniProtKB.bin), a teacher name ("
            + ", ".join(sorted(teachers.REGISTRY)) + "), a local teacher checkpoint (ESM-2 .pt "
            "file or ProtT5 directory) or a no-weight baseline (aac, kmer1..kmer3, "
            "random-student[:preset])")


def resolve(spec: str | ModelSpec) -> ModelSpec:
    """Classify ``spec`` without loading it; local paths become absolute (so the spec means
    the same in a Ray worker or Serve replica started elsewhere).

    Raises:
        ValueError: the spec matches nothing (the message lists what is accepted), or
            ``student:PATH`` is not a student directory.
    """
    if isinstance(spec, ModelSpec):
        return spec
    spec = str(spec).strip()
    if spec.startswith(MLFLOW_PREFIXES):
        return ModelSpec("mlflow", spec)
    if spec == "mtdp-paper" or spec.startswith("mtdp-paper:"):
        path = spec.partition(":")[2]
        return ModelSpec("mtdp-paper", f"mtdp-paper:{Path(path).expanduser().resolve()}"
                         if path else spec)
    if spec in SHIPPED:
        return ModelSpec("student", str(shipped_path(spec)))
    path = spec[len("student:"):] if spec.startswith("student:") else spec
    if is_student_dir(path):
        return ModelSpec("student", str(Path(path).expanduser().resolve()))
    if spec.startswith("student:"):
        raise ValueError(f"{path} is not an mtdp student directory (config.json + "
                         "model.safetensors)")
    if spec in teachers.REGISTRY:
        return ModelSpec("teacher", spec)
    if spec and os.path.exists(os.path.expanduser(spec)):
        return ModelSpec("checkpoint", str(Path(spec).expanduser().resolve()))
    if baselines.is_baseline_spec(spec):
        return ModelSpec("baseline", spec)
    raise ValueError(f"unknown model {spec!r}: give {accepted_forms()}")


def load_embedder(spec: str | ModelSpec, device: str | torch.device | None = None,
                  pooling: str | None = None, precision: str = "fp32",
                  repr_layer: int | Sequence[int] | None = None, **kwargs: Any) -> Embedder:
    """Resolve ``spec`` (see :func:`resolve`) and load it on ``device`` (default: best).
    ``kwargs`` go to a teacher's factory; ``name=`` names a student; ``pooling=`` sets a
    student's pooling (``masked`` or ``reference``; default: its own, the released MTDP
    model's is ``reference``) or a teacher's (``masked``/``mean``, ``max``, ``mean+max``,
    ``bos``: :data:`~.pooling.TEACHER_POOLINGS`); ``repr_layer`` a transformer teacher's
    layer (esm-extract's numbering, negative from the end), or several (concatenated);
    ``precision`` (``auto``, ``fp32``, ``bf16``) its CPU arithmetic
    (:meth:`Embedder.set_precision`)."""
    from .pooling import TEACHER_POOLINGS

    ms = resolve(spec)
    dev = torch.device(device) if device is not None else best_device()
    pooling = "masked" if pooling == "mean" else pooling
    student = ms.kind in ("mlflow", "student", "mtdp-paper")
    if pooling is not None and student and pooling not in ("masked", "reference"):
        raise ValueError(f"--pooling {pooling}: students pool by masked (mean) or reference")
    emb = _load(ms, dev, **kwargs)
    layered = hasattr(emb, "repr_layer")  # ESM-2 and T5 teachers
    if not student and (pooling is not None or repr_layer is not None) and not layered:
        raise ValueError(f"--pooling / --repr-layers apply to students (pooling), ESM-2 and "
                         f"ProtT5 teachers, not to {spec}")
    if not student and pooling is not None and pooling not in TEACHER_POOLINGS:
        raise ValueError(f"--pooling {pooling}: teachers pool by {', '.join(TEACHER_POOLINGS)}")
    if repr_layer is not None:
        if not layered:
            raise ValueError(f"--repr-layers applies to ESM-2 and ProtT5 teachers, not {spec}")
        emb.repr_layer = _layers(repr_layer, emb.num_layers)
        if isinstance(emb.repr_layer, tuple):
            emb.dim *= len(emb.repr_layer)
    if pooling is not None:
        if pooling == "bos" and type(emb).__name__ != "ESM2Teacher":
            raise ValueError(f"--pooling bos needs a BOS token (ESM-2); {spec} has none")
        emb.pooling = pooling
        if pooling == "mean+max":
            emb.dim *= 2
    return emb.set_precision(precision)


def _layers(repr_layer: int | Sequence[int], num_layers: int) -> int | tuple[int, ...] | None:
    """One layer as :func:`~.pooling.layer_index` gives it; several as a tuple of indices (the
    last one too), their states concatenated in that order; a layer given twice is refused."""
    from .pooling import layer_index

    if isinstance(repr_layer, int):
        return layer_index(repr_layer, num_layers)
    if len(repr_layer) == 1:
        return layer_index(repr_layer[0], num_layers)
    idx = [layer_index(k, num_layers) for k in repr_layer]
    full = tuple(num_layers if i is None else i for i in idx)
    if len(set(full)) < len(full):
        raise ValueError(f"--repr-layers {' '.join(map(str, repr_layer))}: a layer is given "
                         "twice")
    return full


def _load(ms: ModelSpec, dev: torch.device, **kwargs: Any) -> Embedder:
    if ms.kind == "mtdp-paper":
        from .mtdp_paper import load_mtdp_paper

        return load_mtdp_paper(ms.value).to(dev)
    if ms.kind == "mlflow":
        from ..tracking import download_student

        local = download_student(ms.value)
        return StudentEmbedder(load_student(local), name=kwargs.get("name", "student"),
                               source=ms.value).to(dev)
    if ms.kind == "student":  # a shipped student is named after itself, not "student"
        shipped = next((n for n in SHIPPED if Path(ms.value).name == n
                        and Path(ms.value).parent == shipped_path(n).parent), "student")
        return StudentEmbedder(load_student(ms.value), name=kwargs.get("name", shipped),
                               source=ms.value).to(dev)
    if ms.kind in ("teacher", "checkpoint"):
        return teachers.load_teacher(ms.value, **kwargs).to(dev)
    return baselines.load_baseline(ms.value).to(dev)


def display_identity(spec: str | ModelSpec, embedder: Embedder) -> tuple[str, str]:
    """A display name and version: ``models:/NAME/V`` → (NAME, V); a student directory →
    (its folder name, sha256 of its weights, 12 hex); anything else → (its name, its source)."""
    ms = resolve(spec)
    if ms.value.startswith("models:/"):
        parts = ms.value[len("models:/"):].split("/")
        return parts[0], (parts[1] if len(parts) > 1 else "latest")
    if ms.kind == "mlflow":
        return ms.value, ms.value
    if ms.kind == "student":
        return Path(ms.value).name, sha256_file(Path(ms.value) / WEIGHTS_FILE)[:12]
    return embedder.name, embedder.source or "unknown"


