"""``mtdp data fetch benchmarks``: the benchmark tasks' data files, downloaded to the layout
the readers expect (:mod:`mtdp.evaluate.sources`), resumable and SHA-256-checked.

Every file comes from a public repository at a pinned commit — the very files this project's
local data were made from (checked: the bytes at those commits hash to the checksums below,
which are also what the benchmark reports for the files it reads). DeepLoc 2.0's five
homology-partition manifests are concatenated into one table. Partial sets stay partial
(FLIP Meltome validation + test rows, DeepSol validation + test; the readers say so). The
DeepFRI nrPDB-GO files (task ``go_pdb``) come from the Flatiron server, which publishes no
checksum: they are checked by size and by the reader. The local Swiss-Prot 2014 GO set
(task ``go``) is built from Debian's ``metastudent-data`` package and is not downloaded here.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..download import DownloadError, download
from ..io import atomic_path, cache_root, hash_file

_GH = "https://github.com/{repo}/raw/{commit}/{path}"
_DEEPLOC = ("bivekpok/esm_deeploc", "02c829f1d1339767e21336dc44d5e76cc19ecc47")
_HOTPROT = ("tfiedlerdev/pretraining-aware-hotprot", "a748f655e3fe51fdddf1cb338f3092fcdf575770")
_GRAPHSOL = ("jcchan23/GraphSol", "43be8f6e761d751c675c1bb3a5691b785215fff4")
_DSOL = ("sameerkhurana10/DSOL_rv0.2", "9cc5da72f1cf3f46350470a06a4d04abbf171f32")
_DEEPFRI = "https://users.flatironinstitute.org/~renfrew/DeepFRI_data/"


@dataclass(frozen=True)
class Piece:
    url: str
    sha256: str | None


@dataclass(frozen=True)
class BenchmarkFile:
    """One file of the data folder: ``path`` (relative), its ``sha256`` (None: unpinned) and
    the pieces it is made of (one: a plain download; several CSVs: concatenated, the header
    kept once)."""

    task: str
    path: str
    sha256: str | None
    pieces: tuple[Piece, ...]


def _gh(src: tuple[str, str], path: str, sha: str | None) -> Piece:
    return Piece(_GH.format(repo=src[0], commit=src[1], path=path), sha)


_DL_PIECES = ("d1c228a9629393fa58e49d78a194f0d09ab28b8960e733f4f80e0836f5eac00b",
              "2124229774e3f428e54aeaef3daac1185ea829d824be78728786a6859e439f66",
              "13ab31712687950e6eedbffc28a2374f35919480a20996837571ece03fe739e9",
              "f9bd455a8e6f25af58bbab054d9e27e8077c2b0ff003057d89d3176c6112295f",
              "c16c3648b27e9de835b81b68dcf7cda685c532d7286d07d9bec7c1c48183fa3b")
_ONE = {  # path in the data folder: (task, source, path in the repository, sha256)
    "meltome/flip_mixed_val.csv": ("meltome", _HOTPROT, "data/val_FLIP.csv",
                                   "94b8b8838250323ee70cbb53f0e2c7d9d6d5a6c35d71cd0e9289ce5996f0b6f0"),
    "meltome/flip_mixed_test.csv": ("meltome", _HOTPROT, "data/test_FLIP.csv",
                                    "e21f8b494bd6ddf70f5a7c02da531a6ece0ffd0dc348182b2bb837043838caf2"),
    "solubility/esol/eSol_train.csv": ("esol", _GRAPHSOL, "Data/eSol_train.csv",
                                       "ef6ac5383f56ebcc7d8751534e35e6856fdbe7f48ee47c3f56fdef850bccb5f0"),
    "solubility/esol/eSol_test.csv": ("esol", _GRAPHSOL, "Data/eSol_test.csv",
                                      "26b149a8fc18ff0e2299b43687613c39341625e4a6d71392f50bc24387678e47"),
    "solubility/deepsol/val_src": ("deepsol", _DSOL, "data/val_src",
                                   "4b869b7ae014fc490930cee5a36284a8e7dbe80eefcb90e280378a052c64eda4"),
    "solubility/deepsol/val_tgt": ("deepsol", _DSOL, "data/val_tgt",
                                   "0b2bb65e082bf9cbeb9b46cd917aa417511075404d77f491ed9afd7112e71227"),
    "solubility/deepsol/test_src": ("deepsol", _DSOL, "data/test_src",
                                    "67e6dc6e104eee78c699b7dc592ffd6a14279abd3bbbd779ac96d7a5f4ab0f11"),
    "solubility/deepsol/test_tgt": ("deepsol", _DSOL, "data/test_tgt",
                                    "ec73662e8911d9bc6de2e9c7d5147b66fb897651c2447f325832c2749c0e48d7"),
}
FILES: tuple[BenchmarkFile, ...] = (
    BenchmarkFile("localization, membrane", "deeploc2/swissprot_train_val_5partitions.csv",
                  "e62ce827ee644ba6bd034e6e9885943ee287dcbc9b9b4efa519875117374b872",
                  tuple(_gh(_DEEPLOC, f"cv_splits_deeploc/Outer_Fold_{k}/Inner_Fold_1/"
                                      "valid_manifest.csv", sha)
                        for k, sha in enumerate(_DL_PIECES, 1))),
    *(BenchmarkFile(task, path, sha, (_gh(src, rpath, sha),))
      for path, (task, src, rpath, sha) in _ONE.items()),
    *(BenchmarkFile("go_pdb", f"go/{name}", None, (Piece(_DEEPFRI + name, None),))
      for name in ("nrPDB-GO_2019.06.18_annot.tsv", "nrPDB-GO_2019.06.18_sequences.fasta")),
)


def checksum(path: str) -> str:
    """The pinned SHA-256 of a data-folder file (the benchmark reports local copies by it)."""
    return next(f.sha256 for f in FILES if f.path == path and f.sha256)


def default_dir() -> Path:
    """Where ``mtdp data fetch benchmarks`` writes by default (the last place
    :func:`mtdp.io.data_dir` looks): ``$MTDP_CACHE/data``."""
    return cache_root() / "data"


def _assemble(f: BenchmarkFile, out: Path, progress: bool) -> None:
    dest = out / f.path
    parts = []
    for k, p in enumerate(f.pieces):
        name = dest.name if len(f.pieces) == 1 else f"{dest.name}.piece{k + 1}"
        where = dest if len(f.pieces) == 1 else out / ".pieces" / name
        parts.append(download(p.url, where, sha256=p.sha256, progress=progress))
    if len(f.pieces) > 1:
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
            for k, part in enumerate(parts):
                with open(part, "rb") as src:
                    if k:
                        src.readline()  # the header, kept once
                    shutil.copyfileobj(src, fh)
        if f.sha256 and hash_file(dest) != f.sha256:
            dest.unlink()
            raise DownloadError(f"{dest}: the concatenated pieces do not hash to {f.sha256}")
        shutil.rmtree(out / ".pieces", ignore_errors=True)


def fetch_benchmarks(out_dir: str | os.PathLike | None = None, *, local: str | None = None,
                     tasks: set[str] | None = None, progress: bool = True, log=print) -> Path:
    """Download every benchmark file (of ``tasks``, if given) into ``out_dir``; a file already
    there that verifies is kept. ``local``: check an existing folder instead (nothing is
    downloaded) — every pinned file must be present and verify. Returns the data folder."""
    chosen = [f for f in FILES if not tasks or set(f.task.split(", ")) & tasks]
    if local:
        root, bad = Path(local), []
        for f in chosen:
            p = root / f.path
            if not p.is_file():
                bad.append(f"{p}: missing")
            elif f.sha256 and hash_file(p) != f.sha256:
                bad.append(f"{p}: sha256 differs from {f.sha256}")
        if bad:
            raise DownloadError(f"{root} is not a complete benchmark data folder: "
                                + "; ".join(bad[:4]) + (" ..." if len(bad) > 4 else ""))
        log(f"[data] {root}: all {len(chosen)} file(s) present and verified")
        return root
    out = Path(out_dir) if out_dir else default_dir()
    for f in chosen:
        dest = out / f.path
        if dest.is_file():
            if f.sha256 and hash_file(dest) != f.sha256:
                raise DownloadError(f"{dest}: sha256 differs from {f.sha256} (not the pinned "
                                    "file); delete it to download again")
            log(f"[data] {f.path} ({f.task}): present, verified")
            continue
        log(f"[data] {f.path} ({f.task}): downloading")
        _assemble(f, out, progress)
    return out
