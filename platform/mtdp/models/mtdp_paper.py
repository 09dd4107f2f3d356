"""The released MTDP model (KennthShang/MTDP, ``models/UniProtKB/UniProtKB.bin``) as an mtdp
student.

The release is a plain PyTorch ``state_dict`` of the repository's ``MTDP`` module
(``embedder.py``): ``T5Encoder`` = ``transformers.T5EncoderModel`` (vocabulary 128, d_model
512, d_ff 2048, d_kv 64, 8 heads, 6 layers, relu, 32 buckets / distance 128, eps 1e-6) and
``embed`` = ``Linear(512, 1280)``. Its tokenizer (``MTDP_tokenizer/spiece.model``) has
ProtT5's ids, which are :mod:`mtdp.tokenizer`'s: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2,
``A L G V S R E D T I P K F Q N Y M H W C X B O U Z`` 3..27 (checked against the file). Its
``get_embedding.py`` cuts proteins to 1,000 residues, pads every one to 1,001 tokens and takes
``embed(mean of all 1,001 hidden states)`` — pads included: ``pooling="reference"`` here.

That is mtdp's ``paper`` student exactly (``T5Encoder.`` → ``encoder.``, ``embed.`` →
``proj.``); the release has no MLM head, so an imported student gets a seeded random one (it
only matters for further distillation, never for embeddings).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..io import cache_root
from .student import POOLINGS, StudentConfig, StudentEmbedder, StudentModel

#: Where the release lives (raw file of the repository's default branch).
RELEASE_URL = "https://github.com/KennthShang/MTDP/raw/main/models/UniProtKB/UniProtKB.bin"
SPEC_PREFIX = "mtdp-paper"
MAX_LEN = 1000


def _expected() -> dict[str, tuple[int, ...]]:
    """Key → shape of the released state_dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = StudentModel(StudentConfig.preset("paper", max_len=MAX_LEN))
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("encoder."):
            out["T5Encoder." + k[len("encoder."):]] = tuple(v.shape)
        elif k.startswith("proj."):
            out["embed." + k[len("proj."):]] = tuple(v.shape)
    return out


def released_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a released ``UniProtKB.bin``, checked key by key and shape by shape.

    Raises:
        ValueError: not a file, truncated or not a PyTorch file, not a state_dict, keys
            missing or unexpected, or shapes that are not the release's (e.g. another
            vocabulary size) — each named.
    """
    src = Path(path)
    if not src.is_file():
        raise ValueError(f"{src}: no such file (the released MTDP weights, "
                         f"models/UniProtKB/UniProtKB.bin of {RELEASE_URL.split('/raw')[0]})")
    try:
        sd = torch.load(src, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValueError(f"{src} is not a complete PyTorch state_dict (truncated or corrupt: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    except Exception as exc:  # noqa: BLE001 - unpickling errors of arbitrary files
        raise ValueError(f"{src} is not a PyTorch state_dict ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{src} does not hold a state_dict (a dict of tensors)")
    expected = _expected()
    # T5 ties embed_tokens to shared: a release saved without the duplicate is complete.
    if "T5Encoder.encoder.embed_tokens.weight" not in sd and "T5Encoder.shared.weight" in sd:
        sd = {**sd, "T5Encoder.encoder.embed_tokens.weight": sd["T5Encoder.shared.weight"]}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{src} is not the released MTDP model: "
                         + (f"{len(missing)} key(s) missing, e.g. {missing[:3]}" if missing
                            else "") + ("; " if missing and unexpected else "")
                         + (f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}"
                            if unexpected else ""))
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            what = (f"vocabulary size {sd[k].shape[0]}, expected {shape[0]} (ProtT5's ids)"
                    if k.endswith(("shared.weight", "embed_tokens.weight")) else
                    f"shape {tuple(sd[k].shape)}, expected {shape}")
            raise ValueError(f"{src}: {k} has {what}; not the released MTDP model")
    return sd


def student_from_release(path: str | os.PathLike, pooling: str = "reference") -> StudentModel:
    """The release as a ``paper`` student (eval mode) with ``pooling``."""
    if pooling not in POOLINGS:
        raise ValueError(f"--pooling must be one of {POOLINGS}, not {pooling!r}")
    sd = released_state_dict(path)
    torch.manual_seed(0)  # the MLM head the release lacks: seeded, reproducible
    cfg = StudentConfig.preset("paper", max_len=MAX_LEN, dropout=0.0, pooling=pooling,
                               metadata={"imported_from": "mtdp-paper",
                                         "release": RELEASE_URL, "source_file": Path(path).name,
                                         "mlm_head": "random (not in the release)"})
    model = StudentModel(cfg)
    mapped = {("encoder." + k[len("T5Encoder."):]) if k.startswith("T5Encoder.")
              else "proj." + k[len("embed."):]: v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    left = [k for k in missing if not k.startswith("mlm_head.")]
    if left or unexpected:  # cannot happen after released_state_dict; kept as a guard
        raise ValueError(f"weights did not map onto the student: {left[:3]} {unexpected[:3]}")
    return model.eval()


def cached_release(local: str | None = None, progress: bool = True) -> Path:
    """The release file: ``local`` if given, else ``$MTDP_CACHE/mtdp-paper/UniProtKB.bin``,
    downloaded (resumable) when absent. The repository publishes no checksum: the download
    is verified by size and by loading (every key and shape checked)."""
    if local:
        return Path(local)
    from ..download import download

    dest = cache_root() / "mtdp-paper" / "UniProtKB.bin"
    if not dest.is_file():
        download(RELEASE_URL, dest, progress=progress)
    return dest


def load_mtdp_paper(spec: str, pooling: str = "reference") -> StudentEmbedder:
    """``mtdp-paper`` (downloaded once) or ``mtdp-paper:/path/UniProtKB.bin``."""
    path = spec.split(":", 1)[1] if ":" in spec else None
    src = cached_release(path)
    return StudentEmbedder(student_from_release(src, pooling), name=SPEC_PREFIX,
                           source=str(Path(src).resolve()), pretrained=True)


def import_release(path: str | os.PathLike, out_dir: str | os.PathLike,
                   pooling: str = "reference") -> Path:
    """Convert the release to an mtdp student directory (Serve, the store, the benchmark and
    MLflow registration then take it like any student)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output {out} exists and is not empty; choose a new folder")
    return student_from_release(path, pooling).save(out)
