"""The embedding job: proteins in any number of files → the embedding store, on Ray Data
(:mod:`.config`, :mod:`.pipeline`, :mod:`.run`)."""
from .config import EmbedJobConfig
from .run import EmbedJobResult, run_embed_job

__all__ = ["EmbedJobConfig", "EmbedJobResult", "run_embed_job"]
