"""How rows reach a table keyed by ``seq_hash`` (or ``model_key``): the key declared to Lance,
idempotent merges, the pipeline writer's appends, retries of commits that met a concurrent one.

Lance (as of pylance 4) commits both of two concurrent ``merge_insert`` calls that insert the
same new key unless the key column is declared the table's "unenforced primary key" (Lance
issue #4585): :func:`ensure_key` declares it on every table mtdp keys, old stores included.
A merge joins its batch against every stored key, so its cost grows with the table; a writer
whose rows are new by construction appends instead while it is alone (:class:`Appender`).
"""
from __future__ import annotations

import re
import time
from typing import Iterable, Sequence

#: Sequences per ``IN (...)`` lookup (the BTree index keeps each one a few ms).
LOOKUP_BATCH = 4096
#: Lance's mark of a table's key column ("unenforced primary key"): without it two concurrent
#: ``merge_insert`` calls that insert the same new key both commit it (Lance issue #4585).
KEY = {"lance-schema:unenforced-primary-key": "true"}


def quoted(hashes: Iterable[str]) -> str:
    """``hashes`` as the list of an SQL ``IN (...)`` filter, each checked to be a hash."""
    out = []
    for h in hashes:
        if not re.fullmatch(r"[0-9a-f]{64}", h):
            raise ValueError(f"not a sequence hash: {h!r}")
        out.append(f"'{h}'")
    return ",".join(out)


def retry(fn, attempts: int = 6):
    """Run a commit, retrying when a concurrent writer committed first (Lance's optimistic
    concurrency); merge inserts are idempotent, so a retry never duplicates a row."""
    for k in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - Lance raises plain errors for conflicts
            if k == attempts - 1 or "onflict" not in str(exc) and "retry" not in str(exc):
                raise
            time.sleep(0.05 * 2 ** k)


def ensure_key(table, column: str) -> None:
    """Declare ``column`` the table's unenforced primary key if it is not yet (tables of stores
    written before mtdp declared it); a store opened read-only keeps working without it."""
    meta = table.schema.field(column).metadata or {}
    if any(k.startswith(b"lance-schema:unenforced-primary-key") for k in meta):
        return
    try:
        table.set_unenforced_primary_key(column)
    except Exception:  # noqa: BLE001 - set concurrently by another process, or not writable
        pass


def insert_new(table, rows) -> int:
    """Insert the ``rows`` whose ``seq_hash`` the table does not hold yet (``merge_insert``:
    a repeated or retried batch never duplicates a row); returns the rows inserted."""
    res = retry(lambda: table.merge_insert("seq_hash").when_not_matched_insert_all()
                .execute(rows))
    return int(getattr(res, "num_inserted_rows", rows.num_rows))


class Appender:
    """The commits of one writer whose rows are new: sequences the table did not hold at
    version ``since`` (looked up after it), distinct across the writer's calls. While every
    commit to the table since ``since`` is this writer's own, a batch is appended (no join
    against the stored keys, so a commit costs the same at 1 k and 60 M rows); once another
    process has committed (Serve, a concurrent job, a compaction), it merges as
    :func:`insert_new` does for the rest of its life. An append overtaken by another commit
    (it landed later than the version after the one it saw) is checked at once: the copies of
    its sequences beyond the first are deleted. ``appended`` / ``merged`` count its commits."""

    def __init__(self, table, since: int) -> None:
        self.table, self.expected = table, since
        self.appended = self.merged = 0

    @property
    def alone(self) -> bool:
        return self.expected is not None

    def __call__(self, rows) -> int:
        if self.alone and self.table.version == self.expected:
            landed = retry(lambda: self.table.add(rows)).version
            self.appended += 1
            if landed == self.expected + 1:
                self.expected = landed
                return rows.num_rows
            self.expected = None  # overtaken: another process commits to this table
            return rows.num_rows - drop_copies(self.table, rows.column("seq_hash").to_pylist())
        self.expected, self.merged = None, self.merged + 1
        return insert_new(self.table, rows)


def drop_copies(table, hashes: Sequence[str]) -> int:
    """Delete every stored copy but one of each of ``hashes``; returns the rows deleted. The
    rows are read and deleted at one version of the table (a concurrent rewrite conflicts and
    the whole step is retried)."""
    deleted = 0
    for i in range(0, len(hashes), LOOKUP_BATCH):
        part = quoted(hashes[i:i + LOOKUP_BATCH])

        def once() -> int:
            ds = table.to_lance()
            found = ds.to_table(columns=["seq_hash"], filter=f"seq_hash IN ({part})",
                                with_row_id=True)
            seen, extra = set(), []
            for h, row in zip(found["seq_hash"].to_pylist(), found["_rowid"].to_pylist()):
                if h in seen:
                    extra.append(row)
                seen.add(h)
            if extra:
                ds.delete(f"seq_hash IN ({part}) AND _rowid IN ({','.join(map(str, extra))})")
            return len(extra)

        deleted += retry(once)
    return deleted
