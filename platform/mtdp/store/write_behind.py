"""Write-behind for a long-lived process that adds to one model's table while it answers
requests (Serve): new embeddings are answered from memory at once and committed in the
background, so no request waits for a commit.

Through the table itself every request with a new sequence waited for two commits: the
merge of its rows (a median 88 ms on a CPU replica, up to 447 ms when it compacted) and the
throughput record in ``_models``. :class:`WriteBehind` gathers the rows and the time of
every request and commits them together every ``every_s`` seconds (or sooner, once
``max_rows`` are waiting): one merge and one record per flush, whatever the traffic.

What it answers is never less than the table would: :meth:`WriteBehind.lookup` reads the
waiting rows first, then the table, and a flushed row leaves memory only after its commit.
A process that dies loses at most its waiting rows, which are only computed again when next
asked (the store is idempotent; nothing stored is ever lost). A commit that fails (a store
on object storage out of reach) is reported and retried at the next flush; while
``cap_rows`` wait, further new rows are answered but not kept (memory stays bounded).
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .lance import StoreError

if TYPE_CHECKING:
    from .lance import ModelTable

log = logging.getLogger("mtdp.store")


class WriteBehind:
    """``table``'s :meth:`lookup`, :meth:`add` and :meth:`record_time`, committed every
    ``every_s`` seconds by a background thread; :meth:`close` commits what waits.
    ``max_rows``: waiting rows that start a flush at once; ``cap_rows`` (default 16 ×
    ``max_rows``): waiting rows past which new ones are not kept."""

    def __init__(self, table: "ModelTable", every_s: float = 1.0, max_rows: int = 4096,
                 cap_rows: int | None = None) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0 seconds (got {every_s})")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 (got {max_rows})")
        self.table, self.name, self.dim = table, table.name, table.dim
        self.every_s, self.max_rows = float(every_s), int(max_rows)
        self.cap_rows = int(cap_rows if cap_rows is not None else 16 * max_rows)
        self._pending: dict[str, tuple[int, np.ndarray]] = {}
        self._proteins, self._seconds = 0, 0.0
        self._lock = threading.Lock()  # the waiting rows and counts
        self._flushing = threading.Lock()  # one flush at a time (the thread, close)
        self._wake = threading.Event()
        self._closed = False
        #: Rows committed, flushes that failed, rows answered but not kept (cap reached).
        self.committed = self.failures = self.unkept = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"mtdp-write-behind-{table.key[:12]}")
        self._thread.start()

    # -- what embed_cached calls (ModelTable's signatures) ---------------------------------
    def lookup(self, hashes: Iterable[str], lengths: dict[str, int] | None = None
               ) -> dict[str, np.ndarray]:
        """Embeddings of ``hashes`` waiting here or stored; see :meth:`ModelTable.lookup`."""
        hashes = list(hashes)
        with self._lock:
            held = {h: self._pending[h] for h in hashes if h in self._pending}
        found = {h: v for h, (_, v) in held.items()}
        if lengths is not None:
            lengths.update({h: n for h, (n, _) in held.items()})
        rest = [h for h in hashes if h not in held]
        if rest:  # a row flushed since the snapshot above is in the table by now
            found.update(self.table.lookup(rest, lengths))
        return found

    def add(self, hashes: Sequence[str], lengths: Sequence[int], embeddings: np.ndarray
            ) -> int:
        """Keep new embeddings for the next flush (checked as :meth:`ModelTable.add` checks
        them); returns the rows kept."""
        emb = np.array(embeddings, dtype=np.float32, copy=True)
        if emb.shape != (len(hashes), self.dim) or not np.isfinite(emb).all():
            raise StoreError(f"refusing to store embeddings of shape {emb.shape} (expected "
                             f"{(len(hashes), self.dim)}, all finite) for {self.name}")
        kept = 0
        with self._lock:
            for h, n, v in zip(hashes, lengths, emb):
                if h in self._pending:
                    continue
                if len(self._pending) >= self.cap_rows:
                    self.unkept += 1
                    continue
                self._pending[h] = (int(n), v)
                kept += 1
            full = len(self._pending) >= self.max_rows
        if full:
            self._wake.set()
        return kept

    def record_time(self, proteins: int, seconds: float) -> None:
        """Add to the model's measured throughput at the next flush."""
        if proteins > 0:
            with self._lock:
                self._proteins += int(proteins)
                self._seconds += float(seconds)

    # -- flushing --------------------------------------------------------------------------
    def pending(self) -> int:
        """Rows answered but not committed yet."""
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Commit what waits now: one merge of the rows, one throughput record. Returns the
        rows committed; a failed commit is reported and its rows kept for the next flush."""
        with self._flushing:
            with self._lock:
                batch = dict(self._pending)
                proteins, seconds = self._proteins, self._seconds
                self._proteins, self._seconds = 0, 0.0
            if batch and not self._commit_rows(batch):
                self._restore_time(proteins, seconds)
                return 0
            try:
                self.table.record_time(proteins, seconds)
            except Exception as exc:  # noqa: BLE001 - reported; kept for the next flush
                self.failures += 1
                self._restore_time(proteins, seconds)
                log.warning("store %s: recording %s's throughput failed (%s); retried at the "
                            "next flush", self.table.store.uri, self.name, exc)
            return len(batch)

    def _commit_rows(self, batch: dict[str, tuple[int, np.ndarray]]) -> bool:
        keys = list(batch)
        try:
            self.table.add(keys, [batch[h][0] for h in keys],
                           np.stack([batch[h][1] for h in keys]))
        except Exception as exc:  # noqa: BLE001 - reported; the rows wait for the next flush
            self.failures += 1
            log.warning("store %s: committing %d embedding(s) of %s failed (%s); they are "
                        "kept and retried at the next flush", self.table.store.uri,
                        len(keys), self.name, exc)
            return False
        with self._lock:  # only now: until here, lookup answered them from memory
            for h in keys:
                self._pending.pop(h, None)
        self.committed += len(keys)
        return True

    def _restore_time(self, proteins: int, seconds: float) -> None:
        with self._lock:
            self._proteins += proteins
            self._seconds += seconds

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.every_s)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                log.exception("store %s: write-behind flush failed", self.table.store.uri)

    def close(self, timeout_s: float = 60.0) -> int:
        """Stop the thread and commit what waits (a process shutting down); returns the rows
        still not committed (0 unless the last commit failed)."""
        if not self._closed:
            self._closed = True
            self._wake.set()
            self._thread.join(timeout_s)
            self.flush()
        return self.pending()
