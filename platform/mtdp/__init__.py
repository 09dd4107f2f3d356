"""mtdp: fast, accurate protein embeddings by multi-teacher knowledge distillation.

The library behind the ``jobs/``, ``serve/`` and ``tune/`` entry points: sequences and
tokenizer, the student model, teachers, the embedding engine, and (in their own modules)
precompute, distillation, benchmarks, serving and tracking.
"""
__version__ = "0.1.0"
