"""Search over the embedding store and annotation transfer from nearest neighbours.

:mod:`.index` (approximate-nearest-neighbour indexes on a model's table), :mod:`.query`
(k nearest stored proteins of query vectors or sequences, hits named by the ids of the
store's runs), :mod:`.transfer` (label transfer from neighbours: goPredSim's reliability for
GO terms, weighted votes for classes), :mod:`.annotate` (``mtdp annotate``: a reference table
of annotated proteins → labels for new ones).
"""
from .index import METRICS, build_index, index_state
from .query import Hit, nearest, search_records
from .transfer import knn, similarity

__all__ = ["METRICS", "Hit", "build_index", "index_state", "knn", "nearest",
           "search_records", "similarity"]
