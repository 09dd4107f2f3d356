"""Input data for precompute: downloading UniProtKB/Swiss-Prot, and reading big inputs in
parallel pieces.

* :func:`download` fetches a URL with HTTP ``Range`` resume (a ``.part`` file survives a dropped
  connection or a killed process), checks the size and an MD5/SHA-256 checksum and only then
  renames the file into place. :func:`fetch_swissprot` applies it to UniProt's canonical
  Swiss-Prot FASTA, taking size and MD5 from UniProt's ``RELEASE.metalink``, or simply checks
  and returns a local copy (``--local``) on machines without network.
* :func:`plan_inputs` turns FASTA files (plain or ``.gz``) and Parquet files of ``id, sequence``
  into :class:`InputRange` pieces — byte ranges aligned to record starts for FASTA, row-group
  ranges for Parquet — that Ray tasks parse independently (:func:`read_range`), so a large file
  is never parsed on one node in one piece. Gzip cannot be split, so it is first decompressed,
  streaming, to a plain file.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import io
import os
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from .sequences import Record, SequenceError, iter_fasta

#: Canonical UniProtKB/Swiss-Prot FASTA (reviewed proteins), current release.
SWISSPROT_URL = ("https://ftp.uniprot.org/pub/databases/uniprot/current_release/knowledgebase/"
                 "complete/uniprot_sprot.fasta.gz")
#: UniProt's per-release metalink (XML) with the size and MD5 of every file in the folder.
SWISSPROT_METALINK_URL = ("https://ftp.uniprot.org/pub/databases/uniprot/current_release/"
                          "knowledgebase/complete/RELEASE.metalink")
#: Target size of one FASTA read piece (bytes of plain text).
DEFAULT_RANGE_BYTES = 16 << 20
#: Target rows of one Parquet read piece (whole row groups are never split).
DEFAULT_RANGE_ROWS = 50_000


class DownloadError(RuntimeError):
    """A download that did not produce a complete, verified file."""


# ---- downloads ------------------------------------------------------------------------------
def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        req = urllib.request.Request(url, headers={"User-Agent": "mtdp-download"})
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if offset and resp.status != 206:
                    offset = 0  # the server ignored Range: start over
                total = _total_from_headers(resp, offset)
                if expected is None:
                    expected = total
                elif total is not None and total != expected:
                    raise DownloadError(f"{url}: server reports {total} bytes, expected "
                                        f"{expected}; the remote file changed?")
                with open(part, "ab" if offset else "wb") as fh:
                    done = offset
                    shown = 0.0
                    while block := resp.read(chunk):
                        fh.write(block)
                        done += len(block)
                        if progress and time.monotonic() - shown > 2:
                            shown = time.monotonic()
                            pct = f" ({100 * done / expected:.1f} %)" if expected else ""
                            print(f"download {dest.name}: {done:,} bytes{pct}", file=sys.stderr)
            if expected is None or part.stat().st_size >= expected:
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


def _verify(path: Path, size: int | None, md5: str | None, sha256: str | None,
            delete_on_error: bool) -> None:
    actual = path.stat().st_size
    problems = []
    if size is not None and actual != size:
        problems.append(f"size {actual} bytes, expected {size}")
    for algo, want in (("md5", md5), ("sha256", sha256)):
        if want and not problems:
            got = _hash_file(path, algo)
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
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    with open(p, "rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        with gzip.open(p, "rb") as gz:
            try:
                head = gz.read(1)
            except (OSError, EOFError) as exc:
                raise SequenceError(f"not a readable gzip file ({exc})", source=str(p)) from exc
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


def add_data_command(sub: argparse._SubParsersAction) -> None:
    """``mtdp data swissprot``: download (or check a local copy of) UniProtKB/Swiss-Prot."""
    p = sub.add_parser("data", help="fetch input data sets (Swiss-Prot)")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    sp = dsub.add_parser(
        "swissprot", help="download UniProtKB/Swiss-Prot FASTA (resumable, verified)",
        description="Download uniprot_sprot.fasta.gz from UniProt (resumes a partial download, "
                    "checks size and MD5 from RELEASE.metalink), or check a local copy; prints "
                    "the path to pass to jobs/precompute_teachers.py --inputs.")
    sp.add_argument("-o", "--out-dir", default=".", help="folder to download into (default .)")
    sp.add_argument("--local", default=None,
                    help="use this existing FASTA (plain or .gz) instead of downloading")
    sp.add_argument("--url", default=SWISSPROT_URL, help="source URL (default: UniProt)")
    sp.add_argument("--metalink", default=SWISSPROT_METALINK_URL,
                    help="metalink with size/MD5 ('' to skip)")
    sp.add_argument("--md5", default=None, help="expected MD5 (overrides the metalink)")
    sp.add_argument("--sha256", default=None, help="expected SHA-256")
    sp.add_argument("--quiet", action="store_true", help="no progress messages")
    sp.set_defaults(func=_run_swissprot)


def _run_swissprot(args: argparse.Namespace) -> int:
    try:
        path = fetch_swissprot(args.out_dir, local=args.local, url=args.url,
                               metalink_url=args.metalink or None, md5=args.md5,
                               sha256=args.sha256, progress=not args.quiet)
    except DownloadError as exc:
        print(f"mtdp data: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


# ---- parallel input pieces ------------------------------------------------------------------
@dataclass
class InputFile:
    """One user input: ``source`` is what the user gave, ``path`` what is read (a decompressed
    copy for ``.gz``)."""

    source: str
    path: str
    kind: str  # "fasta" | "parquet"
    index: int = 0


@dataclass
class InputRange:
    """A piece of one input that one task parses: bytes ``[start, end)`` of a FASTA (starting
    at a ``>``) or row groups ``[start, end)`` of a Parquet file. ``first_record`` is the 1-based
    number of its first record in the file (known after :func:`count_records`)."""

    source: str
    path: str
    kind: str
    file_index: int
    start: int
    end: int
    first_record: int = 1
    records: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def input_kind(path: str | os.PathLike) -> str:
    """``parquet``, ``fasta.gz`` or ``fasta`` from the file's magic bytes."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input {p}: no such file")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return "parquet"
    if magic[:2] == b"\x1f\x8b":
        return "fasta.gz"
    return "fasta"


def gunzip_to(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Stream-decompress ``src`` to ``dst`` (atomically; a truncated gzip is an error)."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".partial")
    written = 0
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(1 << 20):
                fout.write(block)
                written += len(block)
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        tmp.unlink(missing_ok=True)
        raise SequenceError(f"corrupt or truncated gzip file ({exc}) after {written:,} "
                            "decompressed bytes; re-download or re-compress it",
                            source=os.fspath(src)) from exc
    os.replace(tmp, dst)
    return str(dst)


def fasta_ranges(path: str | os.PathLike, target_bytes: int = DEFAULT_RANGE_BYTES
                 ) -> list[tuple[int, int]]:
    """Split a plain FASTA into byte ranges of about ``target_bytes``, each beginning at a line
    that starts with ``>`` (the first begins at 0). Reads only a little around each cut."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as fh:
        pos = target_bytes
        while pos < size:
            fh.seek(pos - 1)
            buf = b""
            found = -1
            while found < 0:
                block = fh.read(1 << 16)
                if not block:
                    break
                buf += block
                found = buf.find(b"\n>")
            if found < 0:
                break
            cut = pos - 1 + found + 1
            if cut > cuts[-1]:
                cuts.append(cut)
            pos = max(cut + 1, pos + target_bytes)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def plan_inputs(files: list[InputFile], *, range_bytes: int = DEFAULT_RANGE_BYTES,
                range_rows: int = DEFAULT_RANGE_ROWS) -> list[InputRange]:
    """Cut every input into :class:`InputRange` pieces (record counts filled in later)."""
    ranges: list[InputRange] = []
    for f in files:
        if f.kind == "parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(f.path).metadata
            names = set(pq.read_schema(f.path).names)
            missing = {"id", "sequence"} - names
            if missing:
                raise SequenceError(f"Parquet input needs columns 'id' and 'sequence'; missing "
                                    f"{sorted(missing)} (has {sorted(names)})", source=f.source)
            first, start, rows = 1, 0, 0
            for g in range(meta.num_row_groups):
                rows += meta.row_group(g).num_rows
                if rows >= range_rows or g == meta.num_row_groups - 1:
                    ranges.append(InputRange(f.source, f.path, f.kind, f.index, start, g + 1,
                                             first_record=first, records=rows))
                    first += rows
                    start, rows = g + 1, 0
        else:
            for a, b in fasta_ranges(f.path, range_bytes):
                ranges.append(InputRange(f.source, f.path, f.kind, f.index, a, b))
    return ranges


def count_records(r: InputRange) -> int:
    """Records (``>`` header lines) in a FASTA range; Parquet ranges already know theirs."""
    if r.kind == "parquet":
        return r.records
    with open(r.path, "rb") as fh:
        fh.seek(r.start)
        data = fh.read(r.end - r.start)
    return data.count(b"\n>") + (1 if data[:1] == b">" else 0)


def read_range(r: InputRange) -> Iterator[Record]:
    """Parse one piece into :class:`Record` objects numbered as in the whole file.

    Raises:
        SequenceError: a structural problem (text before the first header, an empty header,
            bytes that are not UTF-8) naming the file and the record.
    """
    if r.kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(r.path).read_row_groups(range(r.start, r.end),
                                                       columns=["id", "sequence"])
        for n, (rid, seq) in enumerate(zip(table.column("id").to_pylist(),
                                           table.column("sequence").to_pylist())):
            yield Record("" if rid is None else str(rid), seq or "", "",
                         r.first_record + n, r.source)
        return
    with open(r.path, "rb") as fh:
        fh.seek(r.start)
        data = fh.read(r.end - r.start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SequenceError(f"not a text FASTA file: undecodable byte at offset "
                            f"{r.start + exc.start}", source=r.source) from exc
    offset = r.first_record - 1
    try:
        for rec in iter_fasta(io.StringIO(text), name=r.source):
            rec.index += offset
            yield rec
    except SequenceError as exc:
        record = None if exc.record is None else exc.record + offset
        where = f" (in bytes {r.start}-{r.end})" if r.start else ""
        raise SequenceError(exc.reason + where, source=r.source, record=record) from None


def materialize_input(source: str, index: int, work_dir: str | os.PathLike) -> InputFile:
    """An :class:`InputFile` for ``source``; a ``.gz`` FASTA is decompressed into ``work_dir``
    first (once: an existing complete copy is reused)."""
    kind = input_kind(source)
    if kind != "fasta.gz":
        return InputFile(os.path.abspath(source), os.path.abspath(source), kind, index)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    name = Path(source).name
    dst = work / f"{index:03d}-{name[:-3] if name.endswith('.gz') else name}"
    if not dst.is_file():
        gunzip_to(source, dst)
    return InputFile(os.path.abspath(source), str(dst), "fasta", index)


