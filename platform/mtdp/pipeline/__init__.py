"""The one Ray Data embedding pipeline of the library, shared by the embedding job
(:mod:`mtdp.embed_job`) and teacher precompute (:mod:`mtdp.precompute`):

* :mod:`.staging` — inputs read in parallel pieces, every record prepared by the one rule,
  duplicate ids and invalid records found across all inputs, rows staged in shards;
* :mod:`.stages` + :mod:`.passes` — one pass per model: sequences hashed and grouped so each
  distinct one is seen once, those the store holds dropped, the rest embedded on an actor
  pool and committed to the store (:mod:`mtdp.store`) batch by batch;
* :mod:`.context` — the Ray Data settings every stage runs under;
* :mod:`.workdir` — the work folder (the unit of resume) and the rejects listing.
"""
from .context import data_context
from .passes import PassResult, PassSettings, embed_pass
from .staging import StageSettings, stage
from .workdir import WorkDir

__all__ = ["PassResult", "PassSettings", "StageSettings", "WorkDir", "data_context",
           "embed_pass", "stage"]
