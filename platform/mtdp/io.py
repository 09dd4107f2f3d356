"""Files and folders: atomic writes, checksums, and where mtdp's data and caches live.

Every file mtdp writes for others to read appears **atomically**: it is written to a fresh
temporary file beside its final name (created exclusively, so a planted symlink or a second
writer is never followed or shared) and renamed over the target only once complete. A killed
process therefore never leaves a half-written file under the final name, and the temporary
file is removed when the write fails.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

#: Prefix of temporary files (so globs like ``*.parquet`` never see a half-written file).
TMP_PREFIX = ".mtdp-tmp-"


def _file_mode() -> int:
    """Permissions of a normally created file under this process's umask (mkstemp's are
    0600, which would hide results from the other users of a shared folder)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; rename it to ``path`` when the block
    succeeds, delete it when the block raises.

    For writers that want a file name (``pyarrow.parquet.write_table``, ``np.save``...). The
    temporary file is created with ``O_EXCL`` in the target's folder (same file system, so the
    rename is atomic); ``suffix`` keeps an extension some writers insist on.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{target.name}.", suffix=suffix,
                               dir=target.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _FILE_MODE)
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open()`` a temporary file beside ``path`` (``"w"`` text or ``"wb"`` binary), flushed,
    fsynced and renamed to ``path`` when the block succeeds; deleted when it raises."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {}), **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def cached_array(path: str | os.PathLike, compute: Callable[[], Any]):
    """``numpy.load(path)``; when the file is missing, ``compute()`` is saved there first,
    atomically (:func:`atomic_path`): a killed run never leaves a truncated ``.npy`` that a
    rerun would take as finished."""
    import numpy as np

    target = Path(path)
    if not target.is_file():
        with atomic_path(target, suffix=".npy") as tmp:
            np.save(tmp, compute())
    return np.load(target)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=str))


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files a killed writer left in ``folder``; returns how many."""
    n = 0
    for p in Path(folder).glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def hash_file(path: str | os.PathLike, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file (``sha256``, ``md5``, ...), read in ``chunk``-byte blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (records exactly which checkpoint or shard a result came from)."""
    return hash_file(path, "sha256")


def cache_root() -> Path:
    """mtdp's cache folder (UniRep weights, built kernels, downloaded data):
    ``$MTDP_CACHE`` or ``~/.cache/mtdp``."""
    return Path(os.environ.get("MTDP_CACHE") or Path.home() / ".cache" / "mtdp")


#: A checkout's data folder: ``shared/data`` beside the repository (how this project's
#: developers and CI lay it out).
_CHECKOUT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def data_dir() -> Path:
    """The benchmark and sample data folder — the one rule every job and script uses:
    ``$MTDP_DATA_DIR`` if set; else ``../shared/data`` beside a source checkout when that
    folder exists; else ``$MTDP_CACHE/data`` (where ``mtdp data fetch`` downloads to)."""
    env = os.environ.get("MTDP_DATA_DIR")
    if env:
        return Path(env)
    if _CHECKOUT_DATA.is_dir():
        return _CHECKOUT_DATA
    return cache_root() / "data"
