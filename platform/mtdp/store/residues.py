"""Per-residue states of one model in the store, beside its vectors: table ``res_<key>`` with
``seq_hash``, ``length`` and ``states`` (one float16 vector per residue the model saw, or per
window of residues in ``res<w>_<key>``), written
idempotently like the vectors (``merge_insert`` on ``seq_hash``). They are large (residues x
dim x 2 bytes), so only pipelines that ask for them (precompute ``--per-residue``) write them;
a stored vector without states is simply recomputed when states are asked for."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .commits import KEY, Appender
from .lance import ModelTable, StoreError, fetch_rows, optimize_table, stored_hashes


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([pa.field("seq_hash", pa.string(), nullable=False, metadata=KEY),
                      pa.field("length", pa.int32(), nullable=False),
                      pa.field("states", pa.list_(pa.list_(pa.float16(), dim)),
                               nullable=False)])


def states_array(states: Sequence[np.ndarray | None], dim: int):
    """``list<fixed_size_list<float16>[dim]>`` of ``[L_i, dim]`` states, one entry per row
    (null where ``None``)."""
    import pyarrow as pa

    lengths = [0 if s is None else len(s) for s in states]
    flat = np.concatenate([s for s in states if s is not None] or [np.zeros((0, dim))])
    inner = pa.FixedSizeListArray.from_arrays(
        pa.array(flat.astype(np.float16, copy=False).reshape(-1), pa.float16()), dim)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32), pa.int32())
    mask = pa.array([s is None for s in states])
    return pa.ListArray.from_arrays(offsets, inner, mask=mask)


class ResidueTable:
    """The stored per-residue states of the model of ``vectors`` (its :class:`ModelTable`);
    with ``window`` w > 1, their means over windows of w residues
    (:mod:`mtdp.residue_windows`), in a table of their own (``res<w>_<key>``)."""

    def __init__(self, vectors: ModelTable, window: int = 1) -> None:
        if window < 1:
            raise ValueError(f"residue window must be >= 1, got {window}")
        store, self.dim, self.name, self.window = vectors.store, vectors.dim, vectors.name, window
        self.table_name = f"res_{vectors.key}" if window == 1 else f"res{window}_{vectors.key}"
        self.table = store._open_or_create(self.table_name, _schema(self.dim))
        if self.table.schema.field("states").type != _schema(self.dim).field("states").type:
            raise StoreError(f"{store.uri}: table {self.table_name} does not hold {self.dim}-d "
                             f"per-residue states of {self.name}; the store is damaged")
        self.merges = Appender(self.table, None)  # commits without a writer's Appender

    def count(self) -> int:
        return self.table.count_rows()

    def stored(self, hashes: Iterable[str]) -> set[str]:
        """Which of ``hashes`` have stored states."""
        return stored_hashes(self.table, hashes)

    def lookup(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Stored states (float16 ``[L, dim]``, ``[ceil(L / w), dim]`` in windows) of
        ``hashes``; those not stored are absent."""
        found: dict[str, np.ndarray] = {}
        for rows in fetch_rows(self.table, hashes, ["seq_hash", "states"]):
            col = rows.column("states").combine_chunks()
            flat = col.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            offsets = col.offsets.to_numpy()
            for k, h in enumerate(rows.column("seq_hash").to_pylist()):
                found[h] = flat[offsets[k] - offsets[0]:offsets[k + 1] - offsets[0]]
        return found

    def version(self) -> int:
        """The table's version now (every commit adds one)."""
        return self.table.version

    def add(self, hashes: Sequence[str], lengths: Sequence[int], states,
            via: Appender | None = None) -> int:
        """Store states (an Arrow ``states`` column, or a list of ``[L, dim]`` arrays),
        idempotently; returns rows added. ``via``: as in :meth:`ModelTable.add`."""
        import pyarrow as pa

        if len(hashes) == 0:
            return 0
        if not isinstance(states, (pa.Array, pa.ChunkedArray)):
            states = states_array(list(states), self.dim)
        table = pa.table({"seq_hash": pa.array(list(hashes), pa.string()),
                          "length": pa.array(list(lengths), pa.int32()), "states": states})
        table = table.cast(_schema(self.dim))
        # Without a writer's Appender: merges, through this table's own (its fragments
        # compacted every COMPACT_EVERY commits, as the writer's are: Serve's commits).
        return (via or self.merges)(table)

    def optimize(self) -> None:
        """See :func:`mtdp.store.lance.optimize_table`."""
        optimize_table(self.table)
