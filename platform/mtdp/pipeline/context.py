"""The Ray Data settings every pipeline stage runs under (one home for them)."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def data_context(progress_bars: bool | None = None):
    """Run a block with the pipeline's Ray Data settings, restoring the caller's after it:

    * the sort-based shuffle, which runs as plain tasks: the default hash shuffle starts
      aggregator actors (a dozen worker processes, ~20 s of start-up on a 2-core machine) for
      every ``groupby``;
    * Ray Data's own progress bars on or off (``None``: as the caller set them).
    """
    import ray.data
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    if progress_bars is not None:
        ctx.enable_progress_bars = progress_bars
    try:
        yield ctx
    finally:
        ctx.enable_progress_bars, ctx.shuffle_strategy = saved
