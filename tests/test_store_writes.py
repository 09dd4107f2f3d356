"""The store's writes under concurrency: one row per sequence however many processes offer it,
stores written before the key was declared, and the pipeline writer's append path."""
from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from mtdp.store import Appender, EmbeddingStore, seq_hash

IDENTITY = {"dim": 4, "m": "w"}


def _hashes(a: int, b: int) -> list[str]:
    return [seq_hash("M" + "K" * i) for i in range(a, b)]


def _add(table, hashes, via=None) -> int:
    return table.add(hashes, [len(hashes)] * len(hashes), np.ones((len(hashes), 4)), via=via)


def _stored(table) -> list[str]:
    return table.table.to_arrow().column("seq_hash").to_pylist()


def _race(uri, writers: int = 4, batches: int = 12, size: int = 40) -> int:
    """``writers`` threads, each with its own connection, all offering the same batches."""
    added = []

    def write() -> None:
        table = EmbeddingStore(uri).model(IDENTITY, "w")
        added.append(sum(_add(table, _hashes(k * size, (k + 1) * size))
                         for k in range(batches)))

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(added) == writers, "a writer raised"
    return sum(added)


def test_concurrent_writers_of_the_same_sequences_store_each_once(tmp_path) -> None:
    # Without the table's declared key, Lance commits both of two concurrent merge inserts
    # of one new sequence (here: ~1,850 rows for 1,000 sequences).
    added = _race(tmp_path / "s", batches=25)
    stored = _stored(EmbeddingStore(tmp_path / "s").model(IDENTITY, "w"))
    assert len(stored) == len(set(stored)) == 1000
    assert added == 1000  # and each writer counts only what it inserted


def test_processes_creating_the_same_new_store_at_once_all_open_it(tmp_path) -> None:
    """Six connections creating one new store at once (two `mtdp embed --store` started
    together): all open it. A table's folder is listed before its first commit lands, and
    that moment was taken for a foreign or damaged store (8 and 11 of 40 rounds failed)."""
    errors = []

    def open_store(uri) -> None:
        try:
            EmbeddingStore(uri)
        except Exception as exc:  # noqa: BLE001 - collected, asserted below
            errors.append(exc)

    for k in range(40):
        threads = [threading.Thread(target=open_store, args=(tmp_path / f"s{k}",))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, f"{len(errors)} opening(s) failed; first: {errors[0]}"


def test_a_table_written_before_the_key_was_declared_gets_it_when_opened(tmp_path) -> None:
    store = EmbeddingStore(tmp_path / "s")
    table = store.model(IDENTITY, "w")
    old = pa.schema([pa.field("seq_hash", pa.string(), nullable=False),
                     pa.field("length", pa.int32(), nullable=False),
                     pa.field("embedding", pa.list_(pa.float32(), 4), nullable=False)])
    store.db.create_table(table.table_name, schema=old, mode="overwrite")  # as mtdp wrote it
    assert not store.db.open_table(table.table_name).schema.field("seq_hash").metadata
    _race(tmp_path / "s")
    stored = _stored(EmbeddingStore(tmp_path / "s").model(IDENTITY, "w"))
    assert len(stored) == len(set(stored)) == 480
    meta = store.db.open_table(table.table_name).schema.field("seq_hash").metadata
    assert any(k.startswith(b"lance-schema:unenforced-primary-key") for k in meta)


def test_a_vector_stored_twice_by_an_old_store_hides_no_other_hash(tmp_path) -> None:
    # Stores written before the key could hold a hash twice; a lookup capped at one row per
    # wanted hash then returned the copy and missed another hash (re-embedded every run).
    store = EmbeddingStore(tmp_path / "s")
    table = store.model(IDENTITY, "w")
    a, b, c = _hashes(0, 3)
    table.table.add(pa.table({"seq_hash": [a, a, b, c], "length": pa.array([1, 1, 2, 3],
                                                                         pa.int32()),
                              "embedding": pa.FixedSizeListArray.from_arrays(
                                  pa.array(np.arange(16, dtype=np.float32)), 4)},
                             schema=table.table.schema))
    assert table.stored([a, b]) == {a, b}
    assert sorted(table.lookup([a, c])) == sorted([a, c])


def test_the_writer_appends_while_alone_and_merges_once_another_process_commits(
        tmp_path) -> None:
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    start = table.version()
    via = Appender(table.table, start)
    assert _add(table, _hashes(0, 100), via) == 100
    assert _add(table, _hashes(100, 200), via) == 100
    assert (via.appended, via.merged, via.alone) == (2, 0, True)
    assert table.version() == start + 2  # one commit each, nothing else
    # Serve (another process) stores 10 of the writer's next batch meanwhile.
    other = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    assert _add(other, _hashes(200, 205) + _hashes(400, 405)) == 10
    assert _add(table, _hashes(200, 300), via) == 95
    assert (via.appended, via.merged, via.alone) == (2, 1, False)
    assert _add(table, _hashes(300, 350), via) == 50  # merges from now on
    stored = _stored(table)
    assert len(stored) == len(set(stored)) == 355


class _Overtaken:
    """A table whose next append is overtaken: another process commits some of the same
    sequences between the writer's version check and its commit."""

    def __init__(self, table, other, hashes) -> None:
        self._table, self._other, self._hashes = table, other, hashes

    def __getattr__(self, name):
        return getattr(self._table, name)

    def add(self, rows):
        _add(self._other, self._hashes)
        return self._table.add(rows)


def test_an_overtaken_append_deletes_its_copies_and_counts_only_new_rows(tmp_path) -> None:
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    other = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    assert _add(table, _hashes(0, 20)) == 20
    racing = _hashes(30, 37) + _hashes(900, 903)  # 7 of the writer's batch, 3 others
    via = Appender(_Overtaken(table.table, other, racing), table.version())
    assert _add(table, _hashes(20, 60), via) == 33
    assert (via.appended, via.alone) == (1, False)
    stored = _stored(table)
    assert len(stored) == len(set(stored)) == 63
    assert set(table.lookup(_hashes(0, 60))) == set(_hashes(0, 60))


def test_optimize_brings_the_index_up_to_date_over_new_rows_and_compacts(tmp_path) -> None:
    # That it does not rebuild the index (its cost: new rows, not the table) is a figure of
    # benchmarks/store_writer.py; here: the updated index covers every row, lookups find them.
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    _add(table, _hashes(0, 300), Appender(table.table, table.version()))
    table.optimize()
    (index,) = [i for i in table.table.list_indices() if list(i.columns) == ["seq_hash"]]
    _add(table, _hashes(300, 400), Appender(table.table, table.version()))
    assert table.table.index_stats(index.name).num_unindexed_rows == 100
    table.optimize()
    (after,) = [i for i in table.table.list_indices() if list(i.columns) == ["seq_hash"]]
    stats = table.table.index_stats(after.name)
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (400, 0)
    assert table.stored(_hashes(0, 400)) == set(_hashes(0, 400))
    assert len(table.table.to_lance().get_fragments()) < 3  # the small fragments compacted


def test_the_writer_compacts_its_fragments_every_n_commits_and_stays_alone(tmp_path) -> None:
    """A fragment per commit, and every manifest listing them all, grew Lance's manifests as
    the square of the commits: every ``compact_every`` commits the writer merges its new
    fragments (older compacted ones kept), appending throughout; the index still finds all."""
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    _add(table, _hashes(0, 50))
    table.optimize()  # an indexed table, as after an earlier pass
    via = Appender(table.table, table.version(), compact_every=4)
    for k in range(22):
        assert _add(table, _hashes(50 + 10 * k, 60 + 10 * k), via) == 10
    assert (via.appended, via.merged, via.compactions, via.alone) == (22, 0, 5, True)
    fragments = table.table.to_lance().get_fragments()
    assert len(fragments) <= 1 + 5 + 2, len(fragments)  # the old one, one per compaction, 2 new
    assert sorted(f.count_rows() for f in fragments)[-2:] == [40, 50]
    stored = _stored(table)
    assert len(stored) == len(set(stored)) == 270
    assert table.stored(_hashes(0, 270)) == set(_hashes(0, 270))


class _CompactedWhileOtherWrites:
    """A table on which another process stores rows while the writer compacts."""

    def __init__(self, table, other, hashes) -> None:
        self._table, self._other, self._hashes = table, other, hashes

    def __getattr__(self, name):
        return getattr(self._table, name)

    def to_lance(self):  # the writer's compaction starts from the table's Lance dataset
        _add(self._other, self._hashes)
        return self._table.to_lance()


def test_rows_another_process_adds_during_a_compaction_make_the_writer_merge(tmp_path) -> None:
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    other = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    racing = _hashes(40, 45)  # 5 of the writer's next batch
    via = Appender(_CompactedWhileOtherWrites(table.table, other, racing), table.version(),
                   compact_every=2)
    assert _add(table, _hashes(0, 20), via) + _add(table, _hashes(20, 40), via) == 40
    assert (via.compactions, via.alone) == (1, False)
    assert _add(table, _hashes(40, 60), via) == 15 and via.merged == 1
    stored = _stored(table)
    assert len(stored) == len(set(stored)) == 60


def test_commits_without_a_writer_merge_and_compact_too(tmp_path, monkeypatch) -> None:
    """Serve and `mtdp embed` commit through the table's own merging Appender: a long-lived
    service's fragments (one per request) are compacted like the pipeline writer's, and its
    rows indexed at each compaction (no pass end ever optimizes a service's table)."""
    import mtdp.store.commits as commits

    monkeypatch.setattr(commits, "COMPACT_EVERY", 3)
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    for k in range(10):  # 5 new sequences each, and (after the first) 2 stored ones again
        assert _add(table, _hashes(5 * k, 5 * k + 5) + (_hashes(0, 2) if k else [])) == 5
    assert (table.merges.merged, table.merges.compactions, table.merges.appended) == (10, 3, 0)
    assert len(table.table.to_lance().get_fragments()) <= 3 + 1
    stored = _stored(table)
    assert len(stored) == len(set(stored)) == 50
    (index,) = [i for i in table.table.list_indices() if list(i.columns) == ["seq_hash"]]
    stats = table.table.index_stats(index.name)  # indexed up to the last (9th) commit
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (45, 5)


def test_a_compaction_leaves_the_fragments_of_earlier_ones_as_they_are(tmp_path) -> None:
    """Windows of unequal size (rejects, uneven batches): a later, larger window's compaction
    does not rewrite the fragment an earlier one made (each row rewritten about once)."""
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    via = Appender(table.table, table.version(), compact_every=2)
    _add(table, _hashes(0, 20), via), _add(table, _hashes(20, 40), via)  # window 1: 40 rows
    (first,) = [f.fragment_id for f in table.table.to_lance().get_fragments()]
    for k in range(4):  # window 2 and 3: 60 rows each
        _add(table, _hashes(40 + 30 * k, 70 + 30 * k), via)
    fragments = table.table.to_lance().get_fragments()
    assert via.compactions == 3 and via.alone
    assert first in [f.fragment_id for f in fragments]
    assert sum(f.count_rows() for f in fragments) == len(set(_stored(table))) == 160


def test_optimize_leaves_settled_fragments_as_they_are(tmp_path, monkeypatch) -> None:
    """LanceDB's own optimize (compaction aiming at 1 M rows) merged the writer's compacted
    fragments once more, every row of a pass written three times: the table's upkeep merges
    only fragments under SETTLED_ROWS, and still indexes every row."""
    import mtdp.store.lance as lance_store

    monkeypatch.setattr(lance_store, "SETTLED_ROWS", 32)
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    via = Appender(table.table, table.version(), compact_every=4)
    for k in range(11):  # two compacted 40-row fragments, then three of a commit each
        _add(table, _hashes(10 * k, 10 * k + 10), via)
    fragments = table.table.to_lance().get_fragments()
    settled = {f.fragment_id: [d.path for d in f.data_files()] for f in fragments
               if f.count_rows() >= 32}
    assert len(settled) == 2 and len(fragments) == 5
    table.optimize()
    after = {f.fragment_id: f for f in table.table.to_lance().get_fragments()}
    assert {k: [d.path for d in after[k].data_files()] for k in settled if k in after} \
        == settled
    assert sorted(f.count_rows() for f in after.values()) == [30, 40, 40]
    (index,) = [i for i in table.table.list_indices() if list(i.columns) == ["seq_hash"]]
    assert table.table.index_stats(index.name).num_unindexed_rows == 0
    assert table.stored(_hashes(0, 110)) == set(_hashes(0, 110))


def _manifests(table) -> int:
    from pathlib import Path

    return sum(1 for p in (Path(table.to_lance().uri) / "_versions").iterdir()
               if p.suffix == ".manifest")


def test_writers_prune_old_versions_and_stay_alone(tmp_path, monkeypatch) -> None:
    """Each kept version's manifest costs every later commit (at 3,000 versions an append
    took 22 ms, 6.5 ms once pruned): the writer prunes versions older than KEEP_VERSIONS_S
    after each compaction, and the throughput record prunes ``_models`` as often; the rows,
    the writer's append path and the index stay."""
    import mtdp.store.commits as commits
    import mtdp.store.lance as lance_store

    monkeypatch.setattr(commits, "KEEP_VERSIONS_S", 0.0)
    monkeypatch.setattr(lance_store, "COMPACT_EVERY", 4)
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    _add(table, _hashes(0, 50))
    table.optimize()
    via = Appender(table.table, table.version(), compact_every=4)
    for k in range(21):
        assert _add(table, _hashes(50 + 10 * k, 60 + 10 * k), via) == 10
        table.record_time(10, 0.5)
    assert (via.appended, via.merged, via.compactions, via.alone) == (21, 0, 5, True)
    assert _manifests(table.table) <= 3  # the newest, and the commit after the pruning
    assert _manifests(table.store._open("_models")) <= 4
    assert table.version() > 25  # versions are numbered on; only old manifests went
    assert len(set(_stored(table))) == len(_stored(table)) == 260
    assert table.stored(_hashes(0, 260)) == set(_hashes(0, 260))
    (model,) = [m for m in table.store.models() if m["model_key"] == table.key]
    assert model["embedded"] == 210


def test_the_age_old_versions_are_kept_is_the_users_to_set_and_checked(
        tmp_path, monkeypatch) -> None:
    """``MTDP_STORE_KEEP_VERSIONS_S`` (for a reader of one's own holding a version for hours)
    overrides the hour: with it set, the pruning that removes every old version by default
    here keeps them; Ray workers get it; a bad value stops the store at the door, naming the
    variable, before anything is created."""
    import pytest

    import mtdp.store.commits as commits
    from mtdp.runtime import worker_env
    from mtdp.store import StoreError

    monkeypatch.setattr(commits, "KEEP_VERSIONS_S", 0.0)
    monkeypatch.setenv("MTDP_STORE_KEEP_VERSIONS_S", "86400")
    assert worker_env()["MTDP_STORE_KEEP_VERSIONS_S"] == "86400"
    table = EmbeddingStore(tmp_path / "s").model(IDENTITY, "w")
    for k in range(6):
        _add(table, _hashes(10 * k, 10 * k + 10))
    before = _manifests(table.table)
    commits.prune_versions(table.table.to_lance())
    assert before >= 6 and _manifests(table.table) == before
    monkeypatch.delenv("MTDP_STORE_KEEP_VERSIONS_S")
    commits.prune_versions(table.table.to_lance())
    assert _manifests(table.table) == 1
    assert len(_stored(table)) == 60
    for bad in ("an hour", "10", "nan", "inf", "-5"):
        monkeypatch.setenv("MTDP_STORE_KEEP_VERSIONS_S", bad)
        with pytest.raises(StoreError, match=f"MTDP_STORE_KEEP_VERSIONS_S='{bad}'.*60"):
            EmbeddingStore(tmp_path / f"new-{bad}")
        assert not (tmp_path / f"new-{bad}").exists()
