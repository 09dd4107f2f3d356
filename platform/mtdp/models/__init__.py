"""Embedding models: the :class:`~mtdp.models.base.Embedder` interface, the student
(:mod:`.student`, fused CPU/GPU inference in :mod:`.fast_t5` with :mod:`.kernels`), the
teachers (:mod:`.teachers`, :mod:`.unirep`), no-weight baselines (:mod:`.baselines`), and
:mod:`.registry`, which turns a user's ``--model`` string into one of them."""
