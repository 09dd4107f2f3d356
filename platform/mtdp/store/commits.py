"""How rows reach a table keyed by ``seq_hash`` (or ``model_key``): the key declared to Lance,
idempotent merges, the pipeline writer's appends, retries of commits that met a concurrent one.

Lance (as of pylance 4) commits both of two concurrent ``merge_insert`` calls that insert the
same new key unless the key column is declared the table's "unenforced primary key" (Lance
issue #4585): :func:`ensure_key` declares it on every table mtdp keys, old stores included.
A merge joins its batch against every stored key, so its cost grows with the table; a writer
whose rows are new by construction appends instead while it is alone (:class:`Appender`).
"""
from __future__ import annotations

import os
import re
import time
import warnings
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


#: Seconds a table's old versions are kept (:func:`prune_versions`) unless
#: ``$MTDP_STORE_KEEP_VERSIONS_S`` says otherwise; a reader holding one version longer than
#: this while another process commits to the table may find its files gone. Every reader in
#: mtdp reads the latest version batch by batch.
KEEP_VERSIONS_S = 3600.0
KEEP_VERSIONS_ENV = "MTDP_STORE_KEEP_VERSIONS_S"
#: The least ``$MTDP_STORE_KEEP_VERSIONS_S`` accepted: a commit or compaction of mtdp's own
#: must never find the version it started from pruned.
MIN_KEEP_VERSIONS_S = 60.0


def keep_versions_s() -> float:
    """Seconds old versions are kept: ``$MTDP_STORE_KEEP_VERSIONS_S`` where set (a number of
    seconds, at least :data:`MIN_KEEP_VERSIONS_S`; e.g. 86400 for a reader of one's own that
    holds a version for hours), else :data:`KEEP_VERSIONS_S`. A bad value is a
    ``ValueError`` naming the variable."""
    raw = os.environ.get(KEEP_VERSIONS_ENV, "").strip()
    if not raw:
        return KEEP_VERSIONS_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (MIN_KEEP_VERSIONS_S <= value < 1e12):  # also refuses nan and inf
        raise ValueError(f"{KEEP_VERSIONS_ENV}={raw!r}: expected the seconds old store "
                         f"versions are kept, a number from {MIN_KEEP_VERSIONS_S:g} to 1e12")
    return value


def prune_versions(ds) -> None:
    """Remove the versions of a table (a Lance dataset) older than :func:`keep_versions_s`,
    with the files only they use; the latest is always kept. Each kept version's manifest
    costs every later commit and version check (measured: at 3,000 versions 3.7 ms to read
    the version and 22 ms an append, 0.4 and 6.5 ms once the old ones were pruned), so
    without it a commit costs more the longer a table has been written. Upkeep: a failure
    is reported, the table is as it was."""
    from datetime import timedelta

    try:
        ds.cleanup_old_versions(older_than=timedelta(seconds=keep_versions_s()),
                                error_if_tagged_old_versions=False)
    except Exception as exc:  # noqa: BLE001 - upkeep; nothing committed depends on it
        warnings.warn(f"pruning old versions of {ds.uri} failed ({exc}); the next "
                      "pruning tries again")


def ensure_index(table) -> bool:
    """Build the ``seq_hash`` BTree index of a table that has rows and none yet; returns
    whether it built one (an index built now covers every row)."""
    from lancedb.index import BTree

    if not table.count_rows() or any(list(i.columns) == ["seq_hash"]
                                     for i in table.list_indices()):
        return False
    table.create_index("seq_hash", config=BTree(), replace=True)
    return True


def update_index(table) -> None:
    """The ``seq_hash`` index over every row: built if absent, else the rows added since
    indexed (Lance's incremental update: its cost follows the new rows, not the table)."""
    if not ensure_index(table) and table.count_rows():
        table.checkout_latest()
        retry(table.to_lance().optimize.optimize_indices)
        table.checkout_latest()


#: A writer's commits between two compactions of the fragments they made (:class:`Appender`).
#: Each commit adds a fragment, and each version's manifest, which Lance keeps until a cleanup,
#: lists every fragment: without compactions the manifests grow as the square of the commits
#: (1,500 commits: 94 MB; a 60 M-protein pass in 2,048-row commits: ~35 GB).
COMPACT_EVERY = 128
#: Rows from which a fragment is settled: the table's upkeep (:func:`.lance.optimize_table`)
#: merges only smaller ones. The writer's compactions make fragments of ~``COMPACT_EVERY``
#: commits (262 k rows at the pipeline's 2,048 per commit); half of that leaves them as they
#: are however many rows their commits lost to rejects.
SETTLED_ROWS = 1 << 17


class Appender:
    """The commits of one writer whose rows are new: sequences the table did not hold at
    version ``since`` (looked up after it), distinct across the writer's calls. While every
    commit to the table since ``since`` is this writer's own, a batch is appended (no join
    against the stored keys, so a commit costs the same at 1 k and 60 M rows); once another
    process has committed (Serve, a concurrent job, a compaction), it merges as
    :func:`insert_new` does for the rest of its life. An append overtaken by another commit
    (it landed later than the version after the one it saw) is checked at once: the copies of
    its sequences beyond the first are deleted. Every ``compact_every`` commits the fragments
    made since the last compaction are merged into one or a few (:meth:`compact`): fragments,
    and so each manifest, stay few at any table size (0: never). ``since=None``: merges from
    the start (commits of ``ModelTable.add`` without a writer: Serve, ``mtdp embed``).
    ``keep_index``: after each compaction while merging, the ``seq_hash`` index is brought
    up to date too (:func:`update_index`), for a long-lived service whose table no pass end
    optimizes. ``appended`` / ``merged`` / ``compactions`` count its commits."""

    def __init__(self, table, since: int | None, compact_every: int | None = None,
                 keep_index: bool = False) -> None:
        self.table, self.expected, self.keep_index = table, since, keep_index
        self.appended = self.merged = self.compactions = 0
        self.compact_every = COMPACT_EVERY if compact_every is None else compact_every
        self._rows: list[int] = []  # rows each commit since the last compaction added
        self._target = 0  # the smallest compaction target so far (0: none yet)

    @property
    def alone(self) -> bool:
        return self.expected is not None

    def __call__(self, rows) -> int:
        added = self._commit(rows)
        self._rows.append(added)
        if self.compact_every and len(self._rows) >= self.compact_every:
            self.compact()
        return added

    def _commit(self, rows) -> int:
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

    def compact(self) -> None:
        """Merge the small fragments of the table (those of the commits since the last
        compaction): fewer rows than those commits added, and than any earlier compaction's
        target, so fragments it made stay as they are and a row is rewritten about once.
        Pages are copied, not re-encoded; deletions are left to the pass's ``optimize``.
        A compaction is upkeep: one that fails is reported and the writer goes on. While
        alone, the writer stays alone only if every commit since its last one adds no row
        (this compaction's, or another process's compaction or index). Then the table's old
        versions are pruned (:func:`prune_versions`)."""
        added, self._rows = sum(self._rows), []
        if added <= 0:
            return
        self._target = min(added, self._target or added)
        try:
            retry(lambda: self.table.to_lance().optimize.compact_files(
                target_rows_per_fragment=self._target, materialize_deletions=False,
                num_threads=1, compaction_mode="try_binary_copy"))
            self.compactions += 1
        except Exception as exc:  # noqa: BLE001 - upkeep; the rows are committed
            warnings.warn(f"compacting {self.table.name} failed ({exc}); its rows are "
                          "committed, the next compaction or optimize tries again")
        self.table.checkout_latest()
        if self.alone:
            ds = self.table.to_lance()  # one snapshot: its version and its history
            since = ds.version - self.expected
            history = ds.get_transactions(since) if since > 0 else []
            quiet = len(history) == since and all(_adds_no_rows(t) for t in history)
            self.expected = ds.version if quiet else None
        if self.keep_index and not self.alone:
            try:
                update_index(self.table)
            except Exception as exc:  # noqa: BLE001 - upkeep; lookups are only slower
                warnings.warn(f"indexing {self.table.name} failed ({exc}); the next "
                              "compaction or optimize tries again")
        prune_versions(self.table.to_lance())  # after the check: it reads the history


def _adds_no_rows(transaction) -> bool:
    """Whether a commit leaves the table's rows as they were: a compaction (its fragment
    reservation, which Lance's Python binding does not name, and its rewrite) or an index."""
    from lance.dataset import LanceOperation

    op = getattr(transaction, "operation", None)
    return isinstance(op, (LanceOperation.Rewrite, LanceOperation.CreateIndex)) or \
        type(op) is LanceOperation.BaseOperation


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
