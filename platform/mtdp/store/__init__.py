"""The embedding store: every embedding ever computed, content-addressed, shared by the
embedding job, ``mtdp embed --store``, Serve and the benchmark (a LanceDB database: a local
folder by default, object storage at scale). :mod:`.keys` (sequence hashes, model identity),
:mod:`.lance` (the store), :mod:`.residues` (per-residue states beside the vectors),
:mod:`.export` (Parquet / ``.npy`` / HDF5)."""
from .keys import seq_hash, store_identity
from .lance import EmbeddingStore, ModelTable, StoreError
from .residues import ResidueTable

__all__ = ["EmbeddingStore", "ModelTable", "ResidueTable", "StoreError", "seq_hash",
           "store_identity"]
