"""Downloads that resume and verify, and the canonical Swiss-Prot FASTA.

:func:`download` fetches a URL with HTTP ``Range`` resume (a ``.part`` file survives a dropped
connection or a killed process), checks the size and an MD5/SHA-256 checksum and only then
renames the file into place. :func:`fetch_swissprot` applies it to UniProt's canonical
Swiss-Prot FASTA, taking size and MD5 from UniProt's ``RELEASE.metalink``, or simply checks and
returns a local copy (``--local``) on machines without network.
"""
from __future__ import annotations

import codecs
import gzip
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Callable

from .inputs import input_kind
from .io import hash_file
from .sequences import SequenceError

#: Canonical UniProtKB/Swiss-Prot FASTA (reviewed proteins), current release.
SWISSPROT_URL = ("https://ftp.uniprot.org/pub/databases/uniprot/current_release/knowledgebase/"
                 "complete/uniprot_sprot.fasta.gz")
#: UniProt's per-release metalink (XML) with the size and MD5 of every file in the folder.
SWISSPROT_METALINK_URL = ("https://ftp.uniprot.org/pub/databases/uniprot/current_release/"
                          "knowledgebase/complete/RELEASE.metalink")


class DownloadError(RuntimeError):
    """A download that did not produce a complete, verified file."""


def _total_from_headers(resp, offset: int) -> int | None:
    """Full file size from a 206 ``Content-Range: bytes a-b/TOTAL`` or a 200 Content-Length."""
    cr = resp.headers.get("Content-Range")
    if cr and "/" in cr:
        total = cr.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    cl = resp.headers.get("Content-Length")
    if cl and cl.isdigit():
        return int(cl) + (offset if resp.status == 206 else 0)
    return None


def download(url: str, dest: str | os.PathLike, *, size: int | None = None,
             md5: str | None = None, sha256: str | None = None, retries: int = 5,
             timeout: float = 60.0, chunk: int = 1 << 20, progress: bool = True,
             sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download ``url`` to ``dest`` with resume, then verify size and checksum.

    Bytes go to ``dest + ".part"``; an existing ``.part`` (from a dropped connection or a killed
    process) is continued with an HTTP ``Range`` request. A server that ignores ``Range``
    (answers 200) restarts the file from zero. Only a file whose size and checksum match is
    renamed to ``dest``; an existing ``dest`` that verifies is returned without downloading.

    Args:
        size: expected size in bytes (else the server's ``Content-Length``/``Content-Range``).
        md5, sha256: expected hex digest (both optional; UniProt publishes MD5).
        retries: attempts after a network error, each resuming where the last stopped.

    Raises:
        DownloadError: still incomplete after ``retries`` (the ``.part`` is kept for the next
            call), or a size/checksum mismatch (the corrupt ``.part`` is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():
        _verify(dest, size, md5, sha256, delete_on_error=False)
        return dest
    expected = size
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        if expected is not None and offset >= expected:
            break
        try:
            expected, whole = _fetch_once(url, part, offset, expected, chunk, timeout,
                                          progress, dest.name)
            if whole:
                break
            last_error = DownloadError(f"connection closed at {part.stat().st_size} of "
                                       f"{expected} bytes")
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # range past the end: the .part is already whole
                break
            last_error = exc
            if 400 <= exc.code < 500:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            last_error = exc  # dropped connection, short read, timeout: resume next attempt
        if attempt < retries:
            sleep(min(2 ** attempt, 30))
    else:
        raise DownloadError(f"{url}: incomplete after {retries + 1} attempt(s) "
                            f"({part.stat().st_size if part.exists() else 0} bytes in {part}; "
                            f"run again to resume): {last_error}")
    _verify(part, expected, md5, sha256, delete_on_error=True)
    os.replace(part, dest)
    return dest


def _fetch_once(url: str, part: Path, offset: int, expected: int | None, chunk: int,
                timeout: float, progress: bool, label: str) -> tuple[int | None, bool]:
    """One HTTP request appending to ``part`` from ``offset``; returns the expected total
    size and whether the ``.part`` file now holds all of it."""
    req = urllib.request.Request(url, headers={"User-Agent": "mtdp-download"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored Range: start over
        total = _total_from_headers(resp, offset)
        if expected is None:
            expected = total
        elif total is not None and total != expected:
            raise DownloadError(f"{url}: server reports {total} bytes, expected {expected}; "
                                "the remote file changed?")
        with open(part, "ab" if offset else "wb") as fh:
            done, shown = offset, 0.0
            while block := resp.read(chunk):
                fh.write(block)
                done += len(block)
                if progress and time.monotonic() - shown > 2:
                    shown = time.monotonic()
                    pct = f" ({100 * done / expected:.1f} %)" if expected else ""
                    print(f"download {label}: {done:,} bytes{pct}", file=sys.stderr)
    return expected, expected is None or part.stat().st_size >= expected


def _verify(path: Path, size: int | None, md5: str | None, sha256: str | None,
            delete_on_error: bool) -> None:
    actual = path.stat().st_size
    problems = []
    if size is not None and actual != size:
        problems.append(f"size {actual} bytes, expected {size}")
    for algo, want in (("md5", md5), ("sha256", sha256)):
        if want and not problems:
            got = hash_file(path, algo)
            if got.lower() != want.lower():
                problems.append(f"{algo} {got}, expected {want}")
    if problems:
        if delete_on_error:
            path.unlink(missing_ok=True)
        raise DownloadError(f"{path}: {'; '.join(problems)}"
                            + ("; deleted it, run again to download afresh" if delete_on_error
                               else "; delete it to download again"))


def parse_metalink(text: str) -> dict[str, dict]:
    """``{file name: {"size": int | None, "md5": str | None}}`` from a (UniProt) metalink XML."""
    root = ET.fromstring(text)
    out: dict[str, dict] = {}
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] != "file" or "name" not in el.attrib:
            continue
        info: dict = {"size": None, "md5": None}
        for sub in el.iter():
            tag = sub.tag.rsplit("}", 1)[-1]
            if tag == "size" and sub.text and sub.text.strip().isdigit():
                info["size"] = int(sub.text.strip())
            elif tag == "hash" and sub.attrib.get("type", "").lower() == "md5" and sub.text:
                info["md5"] = sub.text.strip()
        out[el.attrib["name"]] = info
    return out


def check_fasta_file(path: str | os.PathLike) -> Path:
    """Fail clearly unless ``path`` is a non-empty FASTA (plain or gzip) file."""
    p = Path(path)
    kind = input_kind(p)  # FileNotFoundError naming the file when it is missing
    try:
        with (gzip.open(p, "rb") if kind == "fasta.gz" else open(p, "rb")) as fh:
            head = fh.read(4)
    except (OSError, EOFError, zlib.error) as exc:
        raise SequenceError(f"not a readable gzip file ({exc})", source=str(p)) from exc
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    if head[:1] != b">":
        raise SequenceError("does not start with a '>' header: not a FASTA file", source=str(p))
    return p


def fetch_swissprot(out_dir: str | os.PathLike = ".", *, local: str | None = None,
                    url: str = SWISSPROT_URL, metalink_url: str | None = SWISSPROT_METALINK_URL,
                    md5: str | None = None, sha256: str | None = None,
                    size: int | None = None, progress: bool = True) -> Path:
    """UniProtKB/Swiss-Prot as a local FASTA path: check and return ``local``, or download.

    The download takes size and MD5 from UniProt's ``RELEASE.metalink`` (unless given) so a
    damaged or partial file is never used; it resumes a previous partial download.
    """
    if local:
        return check_fasta_file(local)
    dest = Path(out_dir) / Path(url).name
    if metalink_url and md5 is None and sha256 is None:
        try:
            with urllib.request.urlopen(metalink_url, timeout=60) as resp:
                info = parse_metalink(resp.read().decode()).get(dest.name, {})
            md5, size = info.get("md5"), size or info.get("size")
        except (urllib.error.URLError, OSError, ET.ParseError) as exc:
            print(f"warning: could not read {metalink_url} ({exc}); checking the size only",
                  file=sys.stderr)
    path = download(url, dest, size=size, md5=md5, sha256=sha256, progress=progress)
    return check_fasta_file(path)
