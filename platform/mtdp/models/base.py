"""The one interface every embedding model implements (student, teachers, baselines).

Models are created from a user's ``--model`` string by :mod:`mtdp.models.registry`; batching,
ordering, truncation and I/O live in :mod:`mtdp.embed`.
"""
from __future__ import annotations

import abc
import os
from typing import Any, Sequence

import torch

from ..io import sha256_file
from ..sequences import DEFAULT_MAX_LEN


def best_device() -> torch.device:
    """CUDA if present, else CPU (MPS is skipped: T5 relative bias ops are unreliable there)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Embedder(abc.ABC):
    """A model that maps protein sequences to per-protein vectors.

    Subclasses implement :meth:`embed_batch` on already prepared sequences (validated, cleaned,
    at most :attr:`max_len` residues); :func:`mtdp.embed.embed_sequences` does the rest.
    """

    #: Short name used in columns, logs and tables.
    name: str
    #: Per-protein embedding dimension.
    dim: int
    #: Longest sequence the model accepts (residues); longer inputs are truncated.
    max_len: int = DEFAULT_MAX_LEN
    #: Where the weights came from: hub name, checkpoint path, or ``random-init``.
    source: str = ""
    #: True only for models with real trained weights.
    pretrained: bool = False
    device: torch.device = torch.device("cpu")
    #: Arithmetic of the forward pass on CPU: ``fp32`` or ``bf16`` (set by
    #: :meth:`set_precision`; GPUs keep each model's own half-precision rule).
    precision: str = "fp32"

    def set_precision(self, precision: str) -> "Embedder":
        """``auto`` (bf16 where the CPU has bf16 matrix units, :mod:`mtdp.precision`),
        ``fp32`` or ``bf16``, resolved on this embedder's device; returns self."""
        from ..precision import resolve

        self.precision = resolve(precision, self.device)
        return self

    def cpu_autocast(self):
        """The forward pass's context: bf16 autocast on CPU when :attr:`precision` is bf16."""
        return torch.autocast("cpu", dtype=torch.bfloat16,
                              enabled=self.precision == "bf16" and self.device.type == "cpu")

    @abc.abstractmethod
    def embed_batch(self, sequences: Sequence[str], per_residue: bool = False
                    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Embed one batch. Returns a float32 CPU tensor [B, dim] and, if ``per_residue``, one
        float32 CPU tensor [L_i, dim] per sequence."""

    @abc.abstractmethod
    def to(self, device: str | torch.device) -> "Embedder":
        """Move the model to ``device`` (and choose its precision there); returns self."""

    def num_parameters(self) -> int:
        """Number of model parameters (0 for feature baselines)."""
        return 0

    def preferred_batch_tokens(self, per_residue: bool = False) -> int | None:
        """A model-specific token budget for :func:`mtdp.embed.embed_sequences` when the caller
        gives none (``None``: the engine's device default)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Provenance of this model for manifests and MLflow params."""
        info: dict[str, Any] = {"name": self.name, "class": type(self).__name__, "dim": self.dim,
                                "max_len": self.max_len, "source": self.source,
                                "pretrained": self.pretrained,
                                "parameters": self.num_parameters()}
        if self.source and os.path.isfile(self.source):
            info["sha256"] = sha256_file(self.source)
        if getattr(self, "repr_layer", None) is not None:  # a teacher's non-default choices
            info["repr_layer"] = self.repr_layer
        if hasattr(self, "repr_layer") and getattr(self, "pooling", "masked") != "masked":
            info["pooling"] = self.pooling
        return info
