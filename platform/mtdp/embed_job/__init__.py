"""The embedding job: proteins in any number of files → the embedding store, on the library's
one Ray Data embedding pipeline (:mod:`mtdp.pipeline`); :mod:`.config`, :mod:`.run`."""
from .config import EmbedJobConfig
from .run import EmbedJobResult, run_embed_job

__all__ = ["EmbedJobConfig", "EmbedJobResult", "run_embed_job"]
