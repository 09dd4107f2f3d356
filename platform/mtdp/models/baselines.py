"""Baselines that need no trained weights, so every benchmark table shows how far above
"no learning" a model is.

* ``aac``: amino-acid composition (20 frequencies).
* ``kmer1`` .. ``kmer3``: frequencies of all 1..k-mers of the 20 standard residues,
  concatenated (``kmer2``: 20 + 400 = 420 dims; ``kmer3``: 8,420 dims). k-mers containing
  ``X`` are not counted.
* ``random-student[:preset]``: a randomly initialised mtdp student (seeded), the paper's
  architecture by default (``random-student:tiny`` for tests).

All are :class:`~mtdp.models.base.Embedder` subclasses, so they take the same path as any model
(:func:`mtdp.models.registry.load_embedder` → :mod:`mtdp.embed`).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from ..sequences import STANDARD_AA
from .base import Embedder
from .student import StudentConfig, StudentEmbedder, StudentModel

#: Largest k offered: 20^4 = 160k features would not fit a probe on a CPU.
MAX_K = 3
_INDEX = np.full(256, -1, dtype=np.int64)
for _i, _a in enumerate(STANDARD_AA):
    _INDEX[ord(_a)] = _i


class KmerEmbedder(Embedder):
    """Normalised counts of every k-mer for k = 1..``k`` (``k=1`` is amino-acid composition).

    Each block (one k) sums to 1 over the k-mers counted in a sequence (0 if none, e.g. a
    sequence of only ``X`` or shorter than k).
    """

    pretrained = False

    def __init__(self, k: int, name: str | None = None) -> None:
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k-mer size must be between 1 and {MAX_K}, got {k}")
        self.k = k
        self.name = name or f"kmer{k}"
        self.source = f"{self.name}-features"
        self.dim = sum(20 ** j for j in range(1, k + 1))
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> "KmerEmbedder":
        # Counting runs in numpy; the device is irrelevant.
        return self

    def features(self, sequence: str) -> np.ndarray:
        """The feature vector of one prepared sequence."""
        idx = _INDEX[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]
        blocks = []
        for j in range(1, self.k + 1):
            counts = np.zeros(20 ** j, dtype=np.float64)
            if len(idx) >= j:
                # k-mer code = base-20 number of its residues; any X (-1) invalidates it.
                code = np.zeros(len(idx) - j + 1, dtype=np.int64)
                valid = np.ones(len(idx) - j + 1, dtype=bool)
                for o in range(j):
                    part = idx[o:len(idx) - j + 1 + o]
                    code = code * 20 + np.maximum(part, 0)
                    valid &= part >= 0
                np.add.at(counts, code[valid], 1.0)
                total = counts.sum()
                if total:
                    counts /= total
            blocks.append(counts)
        return np.concatenate(blocks).astype(np.float32)

    def embed_batch(self, sequences: Sequence[str], per_residue: bool = False):
        if per_residue:
            raise ValueError(f"{self.name} is a per-protein feature baseline: no per-residue "
                             "vectors")
        return torch.from_numpy(np.stack([self.features(s) for s in sequences])), None


class AACEmbedder(KmerEmbedder):
    """Amino-acid composition: the 20 residue frequencies."""

    def __init__(self) -> None:
        super().__init__(1, name="aac")


def random_student(preset: str = "paper", seed: int = 0) -> StudentEmbedder:
    """A randomly initialised mtdp student (deterministic for ``seed``). NOT trained."""
    # Forked RNG: the same random student in every process, the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StudentModel(StudentConfig.preset(preset))
    return StudentEmbedder(model.eval(), name=f"random-student-{preset}",
                           source=f"random-init:{preset}:seed{seed}", pretrained=False)


_SPEC = re.compile(r"^(?:aac|kmer(\d+)|random-student(?::(\w+))?)$")


def is_baseline_spec(spec: str) -> bool:
    """True for ``aac``, ``kmerK`` and ``random-student[:preset]``."""
    return bool(_SPEC.match(spec))


def load_baseline(spec: str) -> Embedder:
    """The baseline embedder for a spec string (see module docstring).

    Raises:
        ValueError: not a baseline spec, or a k outside 1..3.
    """
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"unknown baseline {spec!r}: use aac, kmer1..kmer{MAX_K} or "
                         "random-student[:paper|small|tiny]")
    if spec == "aac":
        return AACEmbedder()
    if spec.startswith("kmer"):
        return KmerEmbedder(int(m.group(1)))
    return random_student(m.group(2) or "paper")
