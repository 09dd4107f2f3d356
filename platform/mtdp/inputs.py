"""Reading big inputs in parallel pieces (the reader of every Ray Data job over proteins).

:func:`plan_inputs` turns FASTA files (plain or ``.gz``) and Parquet files of ``id, sequence``
into :class:`InputRange` pieces — byte ranges aligned to record starts for FASTA, row-group
ranges for Parquet — that Ray tasks parse independently (:func:`read_range`), so a large file
is never parsed on one node in one piece. Gzip cannot be split, so it is first decompressed,
streaming, to a plain file (:func:`materialize_input`).
"""
from __future__ import annotations

import codecs
import gzip
import io
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .io import atomic_path
from .sequences import Record, SequenceError, iter_fasta

#: Target size of one FASTA read piece (bytes of plain text).
DEFAULT_RANGE_BYTES = 16 << 20
#: Target rows of one Parquet read piece (whole row groups are never split).
DEFAULT_RANGE_ROWS = 50_000


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
    if p.is_dir():
        raise SequenceError("is a directory, not an input file", source=str(p))
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
    written = 0
    try:
        with atomic_path(dst) as tmp, gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(1 << 20):
                fout.write(block)
                written += len(block)
    except (EOFError, OSError, gzip.BadGzipFile, zlib.error) as exc:
        raise SequenceError(f"corrupt or truncated gzip file ({exc}) after {written:,} "
                            "decompressed bytes; re-download or re-compress it",
                            source=os.fspath(src)) from exc
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
    if r.start == 0 and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
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
        before = data[:exc.start]
        record = r.first_record - 1 + before.count(b"\n>") + (1 if data[:1] == b">" else 0)
        raise SequenceError(f"byte {r.start + exc.start:,} of the file is not UTF-8 text (a "
                            "binary file, or another encoding?)", source=r.source,
                            record=record or None) from exc
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


