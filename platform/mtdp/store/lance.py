"""The embedding store on LanceDB (Lance format, Arrow-native; Ray Data reads it).

Layout of a store (a LanceDB database: a local folder, or ``s3://...`` / ``gs://...``):

* ``_mtdp``   — the store's marker (format, version): a folder without it is not a store;
* ``_models`` — one row per model identity: key, name, dim, identity (JSON), embedding count
  and seconds (the model's measured throughput);
* ``emb_<key>`` — one row per distinct prepared sequence embedded with that model:
  ``seq_hash``, ``length`` (residues the model saw), ``embedding`` (float32 [dim]);
* ``ids_<run>`` — per input run: ``id``, ``seq_hash`` (many ids may share one sequence).

Writes are idempotent (``merge_insert`` on ``seq_hash``, declared the table's key so that
concurrent merges of one new sequence conflict and are retried: a sequence is inserted once,
however often or concurrently it is offered; :mod:`.commits`) and committed batch by batch, so
a killed writer loses nothing it committed and a rerun recomputes nothing that is stored. A
pipeline's writer, whose rows are new by construction, appends while nobody else commits
(:class:`~.commits.Appender`): its commits cost the same at any table size. A folder that is
not a store, a table whose schema does not match, or a model key whose identity differs, is
refused by name — a store is never silently extended with foreign data, nor read for another
model.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .commits import (COMPACT_EVERY, KEY, LOOKUP_BATCH, SETTLED_ROWS, Appender, ensure_index,
                      ensure_key, keep_versions_s, prune_versions, quoted, retry)
from .keys import identity_key

FORMAT = "mtdp-embedding-store"
#: Seconds a process creating a store waits for another's concurrent creation to commit.
CREATE_WAIT_S = 10.0
VERSION = 1
MARKER, MODELS = "_mtdp", "_models"
# Lance's Rust logger: warnings such as "No existing dataset ..., it will be created" are
# routine here; errors still show.
os.environ.setdefault("LANCE_LOG", "error")
os.environ.setdefault("LANCEDB_LOG", "error")
# lancedb warns at every fork once imported; the forks here (Ray starting its processes,
# g++ building mtdp's kernel) exec a new program at once, which is safe.
warnings.filterwarnings("ignore", message="lancedb fork support is experimental")


class StoreError(ValueError):
    """A store that is not one, is damaged, or does not match what is asked of it."""


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([pa.field("seq_hash", pa.string(), nullable=False, metadata=KEY),
                      pa.field("length", pa.int32(), nullable=False),
                      pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)])


def _models_schema():
    import pyarrow as pa

    return pa.schema([pa.field("model_key", pa.string(), nullable=False, metadata=KEY),
                      ("name", pa.string()), ("dim", pa.int32()), ("identity", pa.string()),
                      ("embedded", pa.int64()), ("seconds", pa.float64())])


def _being_created(local: Path | None, names: set[str]) -> bool:
    """No marker, and nothing but what creating a store writes first: an empty or new
    folder, or a store another process is creating this moment (or died creating) — its
    ``_models`` table, and maybe the marker's folder before the marker's first commit."""
    if not names <= {MODELS}:
        return False
    if local is None or not local.exists():
        return True
    return all(p.name in (f"{MODELS}.lance", f"{MARKER}.lance") for p in local.iterdir())


def _is_local(uri: str) -> bool:
    return "://" not in uri


def fetch_rows(table, hashes: Iterable[str], columns: Sequence[str]):
    """The rows of a table keyed by ``seq_hash`` whose hash is in ``hashes``, as Arrow tables
    of up to :data:`LOOKUP_BATCH` hashes each (one indexed ``IN`` filter per batch); the
    ``columns`` only. Never capped at one row per hash: an ids table holds a hash once per
    id, and a store written before ``seq_hash`` was each table's key may hold a vector twice
    (concurrent writers both inserted it) — a cap would then push other hashes out."""
    wanted = list(dict.fromkeys(hashes))
    if not wanted or table.count_rows() == 0:
        return
    for i in range(0, len(wanted), LOOKUP_BATCH):
        part = wanted[i:i + LOOKUP_BATCH]
        yield (table.search().where(f"seq_hash IN ({quoted(part)})").select(list(columns))
               .limit(None).to_arrow())


def stored_hashes(table, hashes: Iterable[str]) -> set[str]:
    """Which of ``hashes`` a table keyed by ``seq_hash`` holds (nothing else is read)."""
    return {h for rows in fetch_rows(table, hashes, ["seq_hash"])
            for h in rows.column("seq_hash").to_pylist()}


def optimize_table(table) -> None:
    """Compact small fragments and bring the ``seq_hash`` index up to date (keeps lookups fast
    as the table grows); safe at any time. The index is built on the first call with rows and
    then updated incrementally, so a call costs what the new rows cost, not the table.
    Fragments of :data:`~.commits.SETTLED_ROWS` rows or more are left as they are (LanceDB's
    own ``optimize`` would rewrite them again), and old versions are pruned
    (:func:`~.commits.prune_versions`). Measurements: docs/results/store-writer.md."""
    if not table.count_rows():
        return
    ensure_index(table)
    retry(lambda: table.to_lance().optimize.compact_files(
        target_rows_per_fragment=SETTLED_ROWS, compaction_mode="try_binary_copy"))
    table.checkout_latest()
    ds = table.to_lance()
    retry(ds.optimize.optimize_indices)
    prune_versions(ds)
    table.checkout_latest()


class EmbeddingStore:
    """A store at ``uri`` (created if absent and ``create``). ``cache_mb``: bound Lance's
    index and metadata caches (by default 6 GB and 1 GB, filled as versions and indices are
    read) to this many MB each; a long-lived writer sets it, since every commit's manifest is
    cached and its memory would grow with the commits."""

    def __init__(self, uri: str | os.PathLike, create: bool = True,
                 cache_mb: int | None = None) -> None:
        import lancedb

        try:  # refused at the door: a bad value would otherwise only warn at each pruning
            keep_versions_s()
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        self.uri = str(uri)
        local = Path(self.uri) if _is_local(self.uri) else None
        if local is not None:
            if local.exists() and not local.is_dir():
                raise StoreError(f"store {local} is a file, not a store folder")
            fresh = not local.exists() or not any(local.iterdir())
            if fresh and not create:
                raise StoreError(f"{local}: no embedding store there")
        # Other processes write the same store (the job's writer, Serve, the CLI): a local
        # store re-reads the table manifest on every access (a cheap file read) so each sees
        # the others' commits at once; object storage re-checks every few seconds.
        session = None if cache_mb is None else lancedb.Session(
            index_cache_size_bytes=cache_mb << 20, metadata_cache_size_bytes=cache_mb << 20)
        self.db = lancedb.connect(self.uri, read_consistency_interval=timedelta(
            seconds=0 if local is not None else 5), session=session)
        names = set(self._tables())
        if MARKER not in names or names <= {MODELS, MARKER}:  # none, or maybe not committed
            if not _being_created(local, names - {MARKER}):
                raise StoreError(f"{self.uri} is not an mtdp embedding store (no {MARKER} "
                                 "table); choose an empty folder or an existing store")
            self._create_marker()
        self._check_marker()
        ensure_key(self._open(MODELS), "model_key")

    # -- layout ---------------------------------------------------------------------------
    def _tables(self) -> list[str]:
        listing = self.db.list_tables()
        return list(getattr(listing, "tables", listing))

    def _create_marker(self) -> None:
        """The ``_models`` and marker tables (``exist_ok``: another process may be creating
        the same store this moment)."""
        import pyarrow as pa

        marker = pa.table({"key": ["format", "version"], "value": [FORMAT, str(VERSION)]})
        for name, content in ((MODELS, {"schema": _models_schema()}), (MARKER, {"data": marker})):
            try:
                self.db.create_table(name, exist_ok=True, **content)
            except Exception:  # noqa: BLE001 - a concurrent creation committed first
                if name not in self._tables():
                    raise
            self._await_table(name)

    def _await_table(self, name: str, seconds: float = CREATE_WAIT_S) -> None:
        """Wait until table ``name`` opens: one created by another process this moment is
        listed (its folder exists) before its first commit lands. Past ``seconds`` the
        check that follows names the store damaged."""
        import time

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.db.open_table(name)
                return
            except Exception:  # noqa: BLE001 - not committed yet
                time.sleep(0.05)

    def _open(self, name: str):
        try:
            return self.db.open_table(name)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable table
            raise StoreError(f"{self.uri}: table {name} cannot be opened ({exc}); the store is "
                             "damaged") from None

    def _open_or_create(self, name: str, schema, key: str = "seq_hash"):
        """Table ``name``, created empty with ``schema`` if absent (or by a concurrent
        writer first), its ``key`` column declared its key (:func:`ensure_key`)."""
        if name not in self._tables():
            try:
                self.db.create_table(name, schema=schema)
            except Exception:  # noqa: BLE001 - created concurrently by another writer
                pass
        table = self._open(name)
        if key in table.schema.names:
            ensure_key(table, key)
        return table

    def _check_marker(self) -> None:
        try:
            rows = dict(zip(*self._open(MARKER).to_arrow().to_pydict().values()))
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{self.uri}: its {MARKER} table is unreadable ({exc})") from None
        if rows.get("format") != FORMAT:
            raise StoreError(f"{self.uri} is not an mtdp embedding store (format "
                             f"{rows.get('format')!r})")
        if int(rows.get("version", 0)) > VERSION:
            raise StoreError(f"{self.uri} was written by a newer mtdp (store version "
                             f"{rows['version']}); upgrade mtdp to read it")

    def models(self) -> list[dict[str, Any]]:
        """Every model of the store (key, name, dim, identity, embedded, seconds)."""
        rows = self._open(MODELS).to_arrow().to_pylist()
        for r in rows:
            r["identity"] = json.loads(r["identity"])
        return rows

    # -- models ---------------------------------------------------------------------------
    def model(self, identity: dict[str, Any], name: str, create: bool = True) -> "ModelTable":
        """The table of the model with this identity (registered on first use)."""
        key = identity_key(identity)
        known = {r["model_key"]: r for r in self.models()}
        dim = int(identity["dim"])
        if key in known:
            if known[key]["identity"] != identity or known[key]["dim"] != dim:
                raise StoreError(f"{self.uri}: model key {key} is registered for another "
                                 f"model ({known[key]['identity']}); refusing to mix them")
        elif not create:
            held = ", ".join(sorted({r["name"] for r in known.values()})) or "none"
            raise StoreError(f"{self.uri} holds no embeddings of {name} (identity {identity});"
                             f" it holds those of: {held}")
        else:
            import pyarrow as pa

            retry(lambda: self._open(MODELS).merge_insert("model_key")
                   .when_not_matched_insert_all().execute(pa.table({
                       "model_key": [key], "name": [name], "dim": [dim],
                       "identity": [json.dumps(identity, sort_keys=True)],
                       "embedded": [0], "seconds": [0.0]},
                       schema=self._open(MODELS).schema)))
        return ModelTable(self, key, name, dim)

    def model_by_key(self, key: str) -> "ModelTable":
        """The table of the model registered under ``key`` (see ``mtdp store info``)."""
        match = [m for m in self.models() if m["model_key"] == key]
        if not match:
            raise StoreError(f"no model with key {key} in {self.uri} (see `mtdp store info`)")
        return self.model(match[0]["identity"], match[0]["name"], create=False)

    # -- ids of a run ---------------------------------------------------------------------
    def runs(self) -> list[str]:
        """Names of the store's input runs (its ``ids_<run>`` tables), sorted."""
        return sorted(t[4:] for t in self._tables() if t.startswith("ids_"))

    def write_ids(self, run: str, ids: Sequence[str], hashes: Sequence[str],
                  append: bool = False, order: Sequence[int] | None = None):
        """The id → sequence-hash table of input run ``run`` (replaced unless ``append``);
        ``order`` is each row's position in the input (default: as given)."""
        import pyarrow as pa

        if not re.fullmatch(r"[A-Za-z0-9_.-]+", run):
            raise ValueError(f"run name {run!r}: use letters, digits, '_', '.', '-'")
        order = list(range(len(ids))) if order is None else list(order)
        table = pa.table({"id": pa.array(list(ids), pa.string()),
                          "seq_hash": pa.array(list(hashes), pa.string()),
                          "order": pa.array(order, pa.int64())})
        name = f"ids_{run}"
        if append and name in self._tables():
            return retry(lambda: self._open(name).add(table))
        return self.db.create_table(name, data=table, mode="overwrite")

    def read_ids(self, run: str):
        """``(ids, hashes)`` of input run ``run``, in input order."""
        name = f"ids_{run}"
        if name not in self._tables():
            raise StoreError(f"{self.uri} has no run {run!r} (runs: {self.runs() or 'none'})")
        t = self._open(name).to_arrow().sort_by("order")
        return t.column("id").to_pylist(), t.column("seq_hash").to_pylist()


class ModelTable:
    """The stored embeddings of one model identity."""

    def __init__(self, store: EmbeddingStore, key: str, name: str, dim: int) -> None:
        self.store, self.key, self.name, self.dim = store, key, name, dim
        self.table_name = f"emb_{key}"
        self.table = store._open_or_create(self.table_name, _schema(dim))
        schema = self.table.schema
        emb = schema.field("embedding").type if "embedding" in schema.names else None
        if "seq_hash" not in schema.names or getattr(emb, "list_size", None) != dim:
            raise StoreError(f"{store.uri}: table {self.table_name} does not hold {dim}-d "
                             f"embeddings of {name} (schema {schema}); the store is damaged")
        # Commits without a writer's Appender (Serve, `mtdp embed`): merged, compacted and
        # indexed as they go.
        self.merges = Appender(self.table, None, keep_index=True)
        self._records = 0  # record_time's commits

    def count(self) -> int:
        return self.table.count_rows()

    def dataset(self):
        """The table as a pylance dataset at its latest version, kept between calls while
        the version is unchanged (it holds the index caches: reopening it for every query
        re-reads the index and doubles a query's latency)."""
        version = self.table.version
        if getattr(self, "_ds_version", None) != version:
            self._ds, self._ds_version = self.table.to_lance(), version
        return self._ds

    def stored(self, hashes: Iterable[str]) -> set[str]:
        """Which of ``hashes`` are stored (their vectors are not read)."""
        return stored_hashes(self.table, hashes)

    def lookup(self, hashes: Iterable[str], lengths: dict[str, int] | None = None
               ) -> dict[str, np.ndarray]:
        """Stored embeddings of ``hashes`` (those not stored are absent from the result);
        ``lengths``, if given, receives the residues each was embedded from."""
        found: dict[str, np.ndarray] = {}
        for rows in fetch_rows(self.table, hashes, ["seq_hash", "length", "embedding"]):
            emb = rows.column("embedding").combine_chunks().flatten().to_numpy(
                zero_copy_only=False).reshape(-1, self.dim)
            keys = rows.column("seq_hash").to_pylist()
            found.update(zip(keys, emb.astype(np.float32, copy=False)))
            if lengths is not None:
                lengths.update(zip(keys, rows.column("length").to_pylist()))
        return found

    def version(self) -> int:
        """The table's version now (every commit adds one)."""
        return self.table.version

    def add(self, hashes: Sequence[str], lengths: Sequence[int], embeddings: np.ndarray,
            via: Appender | None = None) -> int:
        """Store new embeddings (idempotent: stored hashes are skipped); returns rows added.
        ``via``: the writer's :class:`Appender` (made on this table), for rows known new."""
        if len(hashes) == 0:
            return 0
        import pyarrow as pa

        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.shape != (len(hashes), self.dim) or not np.isfinite(emb).all():
            raise StoreError(f"refusing to store embeddings of shape {emb.shape} (expected "
                             f"{(len(hashes), self.dim)}, all finite) for {self.name}")
        table = pa.table({"seq_hash": pa.array(list(hashes), pa.string()),
                          "length": pa.array(list(lengths), pa.int32()),
                          "embedding": pa.FixedSizeListArray.from_arrays(
                              pa.array(emb.reshape(-1), pa.float32()), self.dim)},
                         schema=_schema(self.dim))
        # Without a writer's Appender: merges, through this table's own (its fragments
        # compacted every COMPACT_EVERY commits, as the writer's are: Serve's commits).
        return (via or self.merges)(table)

    def record_time(self, proteins: int, seconds: float) -> None:
        """Add ``proteins`` embedded in ``seconds`` to the model's measured throughput (a
        commit to ``_models``, whose old versions are pruned every ``COMPACT_EVERY``)."""
        if proteins <= 0:
            return
        models = self.store._open(MODELS)
        retry(lambda: models.update(where=f"model_key = '{self.key}'", values_sql={
            "embedded": f"embedded + {int(proteins)}", "seconds": f"seconds + {seconds:.6f}"}))
        self._records += 1
        if self._records % COMPACT_EVERY == 0:  # a version per record: see prune_versions
            prune_versions(models.to_lance())

    def throughput(self) -> float:
        """Proteins per second over every embedding session recorded for this model."""
        row = next(r for r in self.store.models() if r["model_key"] == self.key)
        return row["embedded"] / row["seconds"] if row["seconds"] else float("nan")

    def optimize(self) -> None:
        """See :func:`optimize_table`."""
        optimize_table(self.table)
