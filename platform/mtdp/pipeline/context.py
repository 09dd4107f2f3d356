"""The Ray Data settings every pipeline stage runs under, and the size rule of its two
shuffles (one home for both)."""
from __future__ import annotations

import math
from contextlib import contextmanager

#: Rows a shuffle's reduce task should hold at most (~36 MB of sequences, hashes and ids at
#: UniProt's mean length): partitions grow with the input beyond :data:`MIN_PARTITIONS`.
ROWS_PER_PARTITION = 1 << 16
#: Partitions below which a shuffle is never cut (fewer groups: one partition each). Inputs
#: up to ``MIN_PARTITIONS × ROWS_PER_PARTITION`` (~4 M proteins) get exactly this.
MIN_PARTITIONS = 64
#: Partitions and a shuffle's map tasks at most (then a task takes several input pieces).
#: Beyond ``MAX_PARTITIONS × ROWS_PER_PARTITION`` (~34 M proteins) a task's rows grow again.
#: The cap weighs the driver's cost of map tasks (faster than linear) against each map
#: task's heap (larger with fewer maps); measured in docs/results/pipeline-shuffle.md.
MAX_SHUFFLE_MAPS = MAX_PARTITIONS = 512


@contextmanager
def data_context(progress_bars: bool | None = None):
    """Run a block with the pipeline's Ray Data settings, restoring the caller's after it:

    * the sort-based shuffle, which runs as plain tasks: the default hash shuffle starts
      aggregator actors (a dozen worker processes, ~20 s of start-up on a 2-core machine) for
      every ``groupby``;
    * Ray Data's own progress bars on or off (``None``: as the caller set them);
    * no high-memory warning every 30 s about the actors: a pass sizes its actors' batches
      itself (a per-residue UniRep-1900 actor holds ~2.5 GB by design).
    """
    import ray.data
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    memory = getattr(getattr(ctx, "issue_detectors_config", None),
                     "high_memory_detector_config", None)
    if memory is not None:
        memory.detection_time_interval_s = -1
    if progress_bars is not None:
        ctx.enable_progress_bars = progress_bars
    try:
        yield ctx
    finally:
        ctx.enable_progress_bars, ctx.shuffle_strategy = saved


def shuffle_partitions(groups: int, rows: int) -> int:
    """Partitions of a ``groupby`` over ``groups`` keys and ``rows`` rows: enough that a
    reduce task holds ~:data:`ROWS_PER_PARTITION` rows, at least :data:`MIN_PARTITIONS`, at
    most :data:`MAX_PARTITIONS`, never more than there are groups."""
    wanted = max(MIN_PARTITIONS, min(MAX_PARTITIONS, math.ceil(rows / ROWS_PER_PARTITION)))
    return max(1, min(groups, wanted))


def shuffle_maps(pieces: int) -> int:
    """Map tasks (blocks) feeding a shuffle from ``pieces`` units of input (FASTA ranges,
    staged shards): one each, at most :data:`MAX_SHUFFLE_MAPS` (then a task takes several)."""
    return max(1, min(pieces, MAX_SHUFFLE_MAPS))
