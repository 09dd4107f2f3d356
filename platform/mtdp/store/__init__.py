"""The embedding store: every embedding ever computed, content-addressed, shared by the
embedding job, ``mtdp embed --store``, Serve and the benchmark (a LanceDB database: a local
folder by default, object storage at scale). :mod:`.keys` (sequence hashes, model identity),
:mod:`.lance` (the store), :mod:`.commits` (how rows reach its tables), :mod:`.residues`
(per-residue states beside the vectors), :mod:`.export` (Parquet / ``.npy`` / HDF5)."""
from .commits import Appender
from .keys import seq_hash, store_identity
from .lance import EmbeddingStore, ModelTable, StoreError
from .residues import ResidueTable

__all__ = ["Appender", "EmbeddingStore", "ModelTable", "ResidueTable", "StoreError", "seq_hash",
           "store_identity"]
