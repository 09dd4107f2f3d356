"""The one interface every embedding model implements (student, teachers, baselines), and
:func:`load_embedder`, which turns a user's ``--model`` string into one.

Model specs understood by :func:`load_embedder`:

* a student directory (``config.json`` + ``model.safetensors``), optionally ``student:PATH``;
* an MLflow model URI (``models:/mtdp-student/1``, ``runs:/<id>/student``);
* a teacher name from the registry (``esm2_t33_650M_UR50D``, ``prot_t5_xl_uniref50``,
  ``tiny-random-esm2`` ...), see ``mtdp teachers list``;
* a local teacher checkpoint: an ESM-2 ``.pt`` file or a ProtT5 (``T5EncoderModel``) directory;
* a no-weight baseline: ``aac``, ``kmer1``..``kmer3``, ``random-student[:preset]``
  (see :mod:`mtdp.benchmarks.baselines`).
"""
from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .sequences import DEFAULT_MAX_LEN


def best_device() -> torch.device:
    """CUDA if present, else CPU (MPS is skipped: T5 relative bias ops are unreliable there)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (used to record exactly which checkpoint made an embedding)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class Embedder(abc.ABC):
    """A model that maps protein sequences to per-protein vectors.

    Subclasses implement :meth:`embed_batch` on already prepared sequences (validated, cleaned,
    truncated to :attr:`max_len`); batching, ordering and I/O live in :mod:`mtdp.embed`.
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
        return info

    def embed(self, sequences: Sequence[str], *, batch_tokens: int | None = None,
              per_residue: bool = False, progress: bool = False):
        """Embed prepared sequences in input order: [N, dim] float32 array (plus per-residue
        arrays if asked). Uses length-sorted token-budget batches, see :mod:`mtdp.embed`."""
        from .embed import embed_sequences

        return embed_sequences(self, sequences, batch_tokens=batch_tokens,
                               per_residue=per_residue, progress=progress)


class StudentEmbedder(Embedder):
    """A trained (or randomly initialised) mtdp student as an :class:`Embedder`."""

    def __init__(self, model, name: str = "student", source: str = "",
                 pretrained: bool | None = None) -> None:
        from .tokenizer import ResidueTokenizer

        self.model = model.eval()
        self.tokenizer = ResidueTokenizer()
        # A student written by `mtdp student init` (or any random baseline) says so in its
        # config metadata; anything else was trained.
        if pretrained is None:
            pretrained = model.config.metadata.get("init") != "random"
        self.name, self.source, self.pretrained = name, source, pretrained
        self.dim = model.config.embed_dim
        self.max_len = model.config.max_len
        self.device = next(model.parameters()).device

    def to(self, device: str | torch.device) -> "StudentEmbedder":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    @torch.inference_mode()
    def embed_batch(self, sequences: Sequence[str], per_residue: bool = False):
        ids, mask = self.tokenizer.batch_encode(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        # bf16 autocast on GPU only; CPU stays fp32 so results are exact and reproducible.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            emb, res = self.model.embed_tokens(ids, mask, per_residue=per_residue)
        emb = emb.float().cpu()
        if not per_residue:
            return emb, None
        res = res.float().cpu()
        return emb, [res[i, :len(s)] for i, s in enumerate(sequences)]


def load_embedder(spec: str, device: str | torch.device | None = None, **kwargs: Any) -> Embedder:
    """Resolve a ``--model`` string to an :class:`Embedder` on ``device`` (default: best).

    Raises:
        ValueError: the spec matches nothing, with the list of what is accepted.
    """
    from . import teachers
    from .student import is_student_dir, load_student

    dev = torch.device(device) if device is not None else best_device()
    path = spec[len("student:"):] if spec.startswith("student:") else spec
    if spec.startswith(("models:/", "runs:/", "mlflow:")):
        from .tracking import download_student

        local = download_student(spec)
        return StudentEmbedder(load_student(local), name=kwargs.get("name", "student"),
                               source=spec).to(dev)
    if is_student_dir(path):
        return StudentEmbedder(load_student(path), name=kwargs.get("name", "student"),
                               source=str(Path(path).resolve())).to(dev)
    if spec.startswith("student:"):
        raise ValueError(f"{path} is not an mtdp student directory (config.json + "
                         "model.safetensors)")
    if spec in teachers.REGISTRY or os.path.exists(spec):
        return teachers.load_teacher(spec, **kwargs).to(dev)
    from .benchmarks.baselines import is_baseline_spec, load_baseline

    if is_baseline_spec(spec):
        return load_baseline(spec).to(dev)
    raise ValueError(
        f"unknown model {spec!r}: give a student directory, an MLflow URI (models:/NAME/VERSION), "
        f"a teacher name ({', '.join(sorted(teachers.REGISTRY))}), a local teacher checkpoint "
        "(ESM-2 .pt file or ProtT5 directory) or a no-weight baseline (aac, kmer1..kmer3, "
        "random-student[:preset])")

