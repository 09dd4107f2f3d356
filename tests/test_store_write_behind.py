"""Write-behind (Serve's path into the store): rows answered at once, committed together
later, never dropped from the answers before their commit, kept when a commit fails."""
from __future__ import annotations

import time

import numpy as np
import pytest

from mtdp.store import EmbeddingStore, StoreError, seq_hash
from mtdp.store.write_behind import WriteBehind

IDENTITY = {"dim": 4, "m": "behind"}


def _rows(a: int, b: int):
    hashes = [seq_hash("M" + "A" * i) for i in range(a, b)]
    emb = np.arange(4 * a, 4 * b, dtype=float).reshape(-1, 4)  # row i: 4i .. 4i + 3
    return hashes, [i + 1 for i in range(a, b)], emb


def _until(check, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def table(tmp_path):
    return EmbeddingStore(tmp_path / "s").model(IDENTITY, "behind")


def test_rows_are_answered_at_once_and_committed_together_at_the_flush(table) -> None:
    writer = WriteBehind(table, every_s=3600)
    v0 = table.version()
    for a, b in ((0, 3), (3, 5), (5, 9)):  # three requests' new rows
        h, n, e = _rows(a, b)
        assert writer.add(h, n, e) == b - a
    writer.record_time(9, 0.5)
    hashes, lengths, emb = _rows(0, 9)
    seen: dict[str, int] = {}
    found = writer.lookup(hashes + [seq_hash("W")], seen)
    assert set(found) == set(hashes) and seen == dict(zip(hashes, lengths))
    np.testing.assert_array_equal(np.stack([found[h] for h in hashes]), emb)
    assert table.count() == 0 and table.version() == v0 and writer.pending() == 9
    assert writer.flush() == 9
    assert table.version() - v0 == 1  # one merge for the three requests
    assert table.count() == 9 and writer.pending() == 0
    stored = table.lookup(hashes)
    np.testing.assert_array_equal(np.stack([stored[h] for h in hashes]), emb)
    assert table.throughput() == pytest.approx(18.0)
    assert writer.flush() == 0 and table.version() - v0 == 1  # nothing waits: no commit
    writer.close()


def test_a_failed_commit_keeps_its_rows_answered_and_commits_them_next_time(
        table, monkeypatch) -> None:
    writer = WriteBehind(table, every_s=3600)
    hashes, lengths, emb = _rows(0, 5)
    writer.add(hashes, lengths, emb)
    writer.record_time(5, 1.0)
    real = type(table).add

    def unreachable(*args, **kwargs):
        raise OSError("store out of reach")

    monkeypatch.setattr(type(table), "add", unreachable)
    assert writer.flush() == 0 and writer.failures == 1 and writer.pending() == 5
    assert set(writer.lookup(hashes)) == set(hashes) and table.count() == 0
    monkeypatch.setattr(type(table), "add", real)
    assert writer.flush() == 5 and table.count() == 5
    row = next(r for r in table.store.models() if r["model_key"] == table.key)
    assert (row["embedded"], row["seconds"]) == (5, pytest.approx(1.0))  # recorded once
    writer.close()


def test_the_thread_flushes_on_its_own_and_sooner_when_rows_pile_up(table) -> None:
    timed = WriteBehind(table, every_s=0.05)
    timed.add(*_rows(0, 4))
    assert _until(lambda: table.count() == 4)
    timed.close()
    full = WriteBehind(table, every_s=3600, max_rows=3)
    full.add(*_rows(4, 7))  # max_rows reached: flushed without waiting an hour
    assert _until(lambda: table.count() == 7)
    full.close()


def test_close_commits_what_waits_and_stops_the_thread(table) -> None:
    writer = WriteBehind(table, every_s=3600)
    writer.add(*_rows(0, 6))
    assert writer.close() == 0
    assert table.count() == 6 and not writer._thread.is_alive()
    assert writer.close() == 0  # twice is harmless


def test_past_the_cap_new_rows_are_answered_by_the_caller_but_not_kept(table) -> None:
    writer = WriteBehind(table, every_s=3600, max_rows=100, cap_rows=2)
    assert writer.add(*_rows(0, 5)) == 2 and writer.unkept == 3
    assert writer.pending() == 2
    writer.close()
    assert table.count() == 2


def test_bad_vectors_and_settings_are_refused_by_name(table) -> None:
    writer = WriteBehind(table, every_s=3600)
    h, n, e = _rows(0, 2)
    e[1, 2] = np.nan
    with pytest.raises(StoreError, match="all finite"):
        writer.add(h, n, e)
    with pytest.raises(StoreError, match="expected"):
        writer.add(h, n, np.zeros((2, 3)))
    writer.close()
    with pytest.raises(ValueError, match="every_s"):
        WriteBehind(table, every_s=0)
