"""Protein sequences: FASTA reading, validation, cleaning and truncation.

One source of truth for how every stage (embed, precompute, distil, serve, benchmark) sees a
sequence: :func:`prepare` validates, cleans (ProtTrans convention) and truncates.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator, Sequence

from .io import atomic_path

#: The 20 standard residues plus the ambiguity/rare letters seen in UniProt.
STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
#: Letters accepted on input: standard + X (unknown) + B Z U O (ambiguous / rare, mapped to X).
ACCEPTED_AA = frozenset(STANDARD_AA + "XBZUO")
#: ProtTrans convention: rare/ambiguous residues become X.
_RARE_TO_X = str.maketrans({"U": "X", "Z": "X", "O": "X", "B": "X"})
#: Default truncation length (the paper truncates proteins to 1,000 residues).
DEFAULT_MAX_LEN = 1000
#: Hard ceiling on a single record: far beyond any real protein (titin ~35k aa).
HUGE_SEQUENCE = 100_000


class SequenceError(ValueError):
    """A problem with an input sequence, naming where it is (file, record, id, position)."""

    def __init__(self, message: str, *, source: str | None = None, record: int | None = None,
                 seq_id: str | None = None, position: int | None = None) -> None:
        where = []
        if source is not None:
            where.append(f"file {source}")
        if record is not None:
            where.append(f"record {record}")
        if seq_id is not None:
            where.append(f"id {seq_id!r}")
        if position is not None:
            where.append(f"position {position}")
        self.source, self.record, self.seq_id, self.position = source, record, seq_id, position
        self.reason = message
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass
class Record:
    """One protein: ``id`` is the first word of the header, ``description`` the rest."""

    id: str
    sequence: str
    description: str = ""
    #: 1-based record number in its source file (for error messages).
    index: int = 0
    source: str | None = field(default=None, repr=False)
    #: Residues before truncation, when :func:`fit_length` cut the sequence.
    original_length: int | None = field(default=None, repr=False)


_BOM = "\ufeff"


def _lines(source: str | os.PathLike | IO[str], label: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a FASTA file (plain or gzip, by magic bytes) or text handle;
    files are read as bytes and decoded line by line, so an undecodable byte is reported at
    its own line. A leading UTF-8 byte-order mark is dropped."""
    if not isinstance(source, (str, os.PathLike)):
        for lineno, line in enumerate(source, 1):
            yield lineno, (line.lstrip(_BOM) if lineno == 1 else line)
        return
    path = os.fspath(source)
    if not os.path.exists(path):
        raise SequenceError("no such file", source=label)
    if os.path.isdir(path):
        raise SequenceError("is a directory, not a FASTA file", source=label)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    with (gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")) as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Undecodable(lineno, exc.start, raw.startswith(b">")) from exc
            yield lineno, (text.lstrip(_BOM) if lineno == 1 else text)


class _Undecodable(Exception):
    def __init__(self, lineno: int, column: int, header: bool) -> None:
        super().__init__(lineno, column)
        self.lineno, self.column, self.header = lineno, column, header


def iter_fasta(source: str | os.PathLike | IO[str], *, name: str | None = None) -> Iterator[Record]:
    """Stream records from a FASTA file (plain or gzip, detected by magic bytes) or text handle.

    Multi-line records are joined; blank lines and ``;`` comment lines are skipped; whitespace
    inside sequences is removed; a UTF-8 byte-order mark is accepted. Letters are NOT validated
    here (see :func:`prepare`), so a reader never loses records silently.

    Raises:
        SequenceError: a directory or missing file, text before the first header, an empty
            header, a truncated/corrupt gzip, or a byte that is not UTF-8 — naming the file,
            the record and the line.
    """
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike))
                     else getattr(source, "name", "<stream>"))
    index, lineno = 0, 0
    header: str | None = None
    chunks: list[str] = []
    try:
        for lineno, line in _lines(source, label):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                if header is not None:
                    yield _make_record(header, chunks, index, label)
                index += 1
                header = line[1:].strip()
                if not header:
                    raise SequenceError(f"empty header at line {lineno}", source=label,
                                        record=index)
                chunks = []
            elif header is None:
                raise SequenceError(f"line {lineno} has sequence data before any '>' header; "
                                    "is this FASTA?", source=label)
            else:
                chunks.append(line)
        if header is not None:
            yield _make_record(header, chunks, index, label)
    except _Undecodable as exc:
        raise SequenceError(f"not a text FASTA file: line {exc.lineno}, byte {exc.column + 1} "
                            "is not UTF-8 (a binary file, or another encoding?)", source=label,
                            record=(index + exc.header) or None) from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise SequenceError(f"corrupt or truncated file after line {lineno} ({exc}); "
                            f"{index} record(s) read before the damage", source=label) from exc


def _make_record(header: str, chunks: list[str], index: int, source: str) -> Record:
    parts = header.split(None, 1)
    seq = drop_stop("".join("".join(c.split()) for c in chunks))
    return Record(id=parts[0], sequence=seq, description=parts[1] if len(parts) > 1 else "",
                  index=index, source=source)


def read_fasta(source: str | os.PathLike | IO[str], **kwargs) -> list[Record]:
    """Read a whole FASTA into memory (small files); see :func:`iter_fasta`."""
    return list(iter_fasta(source, **kwargs))


def clean(sequence: str) -> str:
    """Upper-case and map rare/ambiguous residues ``U Z O B`` to ``X`` (ProtTrans convention)."""
    return sequence.upper().translate(_RARE_TO_X)


def validate(sequence: str, *, seq_id: str | None = None, source: str | None = None,
             record: int | None = None, max_input_len: int = HUGE_SEQUENCE) -> None:
    """Raise :class:`SequenceError` if ``sequence`` is empty, huge or has non-amino-acid letters.

    Lower-case letters are accepted (they are upper-cased by :func:`clean`). The error names the
    first bad character and its 1-based position.
    """
    if not sequence:
        raise SequenceError("empty sequence", source=source, record=record, seq_id=seq_id)
    if len(sequence) > max_input_len:
        raise SequenceError(f"sequence of {len(sequence)} residues exceeds the limit of "
                            f"{max_input_len}", source=source, record=record, seq_id=seq_id)
    for pos, ch in enumerate(sequence, 1):
        if ch.upper() not in ACCEPTED_AA:
            raise SequenceError(
                f"invalid character {ch!r}: allowed are the amino-acid letters "
                f"{STANDARD_AA} plus X B Z U O", source=source, record=record, seq_id=seq_id,
                position=pos)


def drop_stop(sequence: str) -> str:
    """The one stop-codon rule: a single trailing ``*`` (translated sequences) is dropped —
    by the FASTA reader and by :func:`prepare`, so files and requests agree."""
    return sequence[:-1] if sequence.endswith("*") else sequence


#: What to do with a sequence longer than a model's ``max_len``: cut it to its first
#: ``max_len`` residues, refuse it, or embed overlapping windows (:func:`windows`).
TOO_LONG_POLICIES = ("truncate", "error", "window")


def windows(length: int, max_len: int, overlap: int | None = None) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows that ``window`` embeds a sequence of ``length`` residues
    in: at most ``max_len`` residues each, consecutive windows sharing ``overlap`` residues
    (default ``max_len // 4``), the first at 0 and the last ending at ``length`` (it may be
    shorter). A sequence of at most ``max_len`` residues is one window."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    overlap = max_len // 4 if overlap is None else overlap
    if not 0 <= overlap < max_len:
        raise ValueError(f"window overlap must be in [0, {max_len}), got {overlap}")
    out, start = [], 0
    while True:
        end = min(start + max_len, length)
        out.append((start, end))
        if end >= length:
            return out
        start += max_len - overlap


def truncate(sequence: str, max_len: int | None) -> str:
    """The one truncation rule: keep the first ``max_len`` residues (the N-terminus), as in
    the paper; ``None`` keeps everything."""
    if max_len is None:
        return sequence
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return sequence if len(sequence) <= max_len else sequence[:max_len]


#: What precompute does with a protein longer than its ``max_len``: ``truncate`` (the first
#: ``max_len`` residues, the paper's) or ``crop`` (:func:`crop`: both ends get seen).
LENGTH_RULES = ("truncate", "crop")


def crop_start(length: int, max_len: int, key: str) -> int:
    """Where :func:`crop` cuts a sequence of ``length`` residues: 0 when it fits; otherwise,
    by a stable hash of ``key`` (the protein id), the N-terminal window (start 0), the
    C-terminal one (start ``length - max_len``) or a uniformly placed one, a third each."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if length <= max_len:
        return 0
    h = zlib.crc32(b"mtdp-crop:" + key.encode())
    kind, room = h % 3, length - max_len
    if kind == 0:
        return 0
    if kind == 1:
        return room
    return (h // 3) % (room + 1)


def crop(sequence: str, max_len: int, key: str) -> str:
    """The one crop rule (:func:`crop_start`): a window of ``max_len`` residues whose place
    depends only on ``key``, so a rerun, another shard or another machine cuts the same."""
    start = crop_start(len(sequence), max_len, key)
    return sequence[start:start + max_len]


def fit_length(records: Iterable[Record], max_len: int, too_long: str = "truncate"
               ) -> tuple[list[Record], list[Record]]:
    """Apply a length policy (:data:`TOO_LONG_POLICIES`) to prepared records: returns the
    records as the model will see them and those that were cut (with their original length
    in :attr:`Record.original_length`).

    Raises:
        SequenceError: ``too_long="error"`` and a record is longer than ``max_len``.
    """
    if too_long not in TOO_LONG_POLICIES:
        raise ValueError(f"too_long must be one of {TOO_LONG_POLICIES}, not {too_long!r}")
    out, cut = [], []
    for rec in records:
        if len(rec.sequence) > max_len and too_long != "window":  # windows: the engine's
            if too_long == "error":
                raise SequenceError(
                    f"sequence of {len(rec.sequence)} residues exceeds the model's max length "
                    f"{max_len} (too_long=error; too_long=truncate embeds its first {max_len} "
                    "residues)", source=rec.source, record=rec.index, seq_id=rec.id)
            rec = Record(rec.id, truncate(rec.sequence, max_len), rec.description, rec.index,
                         rec.source, original_length=len(rec.sequence))
            cut.append(rec)
        out.append(rec)
    return out, cut


def prepare(sequence: str, *, max_len: int | None = DEFAULT_MAX_LEN, seq_id: str | None = None,
            source: str | None = None, record: int | None = None) -> str:
    """Validate, clean and truncate (:func:`truncate`) one sequence exactly as every mtdp
    model sees it — from a file, a request or a table alike. One trailing ``*`` (a stop codon
    in translated sequences) is dropped; ``max_len=None`` disables truncation."""
    sequence = drop_stop(sequence)
    validate(sequence, seq_id=seq_id, source=source, record=record)
    return truncate(clean(sequence), max_len)


def prepare_records(records: Iterable[Record], *, max_len: int | None = DEFAULT_MAX_LEN,
                    on_duplicate: str = "error", on_invalid: str = "error",
                    rejects: list[SequenceError] | None = None) -> Iterator[Record]:
    """Validate/clean/truncate a stream of records and check id uniqueness.

    Args:
        on_duplicate: ``"error"`` (default) raises on a repeated id; ``"keep-first"`` keeps the
            first occurrence and reports later ones into ``rejects``.
        on_invalid: ``"error"`` raises on the first invalid record; ``"skip"`` reports it into
            ``rejects`` (never silently dropped) and goes on.
        rejects: list that receives one :class:`SequenceError` per skipped record.
    """
    if on_duplicate not in ("error", "keep-first"):
        raise ValueError(f"on_duplicate must be 'error' or 'keep-first', not {on_duplicate!r}")
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', not {on_invalid!r}")
    seen: dict[str, int] = {}
    for rec in records:
        if rec.id in seen:
            err = SequenceError(f"duplicate id (first seen at record {seen[rec.id]})",
                                source=rec.source, record=rec.index, seq_id=rec.id)
            if on_duplicate == "error":
                raise err
            if rejects is not None:
                rejects.append(err)
            continue
        try:
            seq = prepare(rec.sequence, max_len=max_len, seq_id=rec.id, source=rec.source,
                          record=rec.index)
        except SequenceError as err:
            if on_invalid == "error":
                raise
            if rejects is not None:
                rejects.append(err)
            continue
        seen[rec.id] = rec.index
        yield Record(rec.id, seq, rec.description, rec.index, rec.source)


def write_fasta(records: Iterable[Record] | Iterable[tuple[str, str]], path: str | os.PathLike,
                width: int = 60) -> None:
    """Write records (or ``(id, sequence)`` pairs) as FASTA, atomically; ``.gz`` paths are
    gzip-compressed."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as fh:  # type: ignore
        for rec in records:
            rid, seq, desc = (rec.id, rec.sequence, rec.description) if isinstance(rec, Record) \
                else (rec[0], rec[1], "")
            fh.write(f">{rid}{' ' + desc if desc else ''}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i:i + width] + "\n")


def records_from_pairs(pairs: Sequence[tuple[str, str]], source: str = "<input>") -> list[Record]:
    """Wrap ``(id, sequence)`` pairs as :class:`Record` objects numbered from 1."""
    return [Record(i, s, "", n, source) for n, (i, s) in enumerate(pairs, 1)]


def check_input_file(path: str | os.PathLike) -> None:
    """Refuse an input FASTA path that is a directory or does not exist, naming it."""
    if os.path.isdir(path) or not os.path.isfile(path):
        raise SequenceError("is a directory, not a FASTA file" if os.path.isdir(path)
                            else "no such file", source=os.fspath(path))


def read_records(path: str | os.PathLike, *, on_duplicate: str = "error",
                 on_invalid: str = "error", rejects: list[SequenceError] | None = None
                 ) -> list[Record]:
    """Every record of a FASTA file, prepared (not truncated) under ``mtdp embed``'s rules
    (:func:`prepare_records`); a file with no record at all is an error naming it."""
    check_input_file(path)
    raw = list(iter_fasta(path))
    if not raw:
        raise SequenceError("no FASTA records (expected '>id' header lines)",
                            source=os.fspath(path))
    return list(prepare_records(raw, max_len=None, on_duplicate=on_duplicate,
                                on_invalid=on_invalid, rejects=rejects))
