"""Retrieval: from a question's vector and text to the contexts the model will read.

- :mod:`~sparkrag.retrieval.filters`: pre- and in-query filters built per question;
- :mod:`~sparkrag.retrieval.fusion`: dense and lexical rankings fused (z-score, RRF,
  weighted) and chunk-to-document aggregation;
- :mod:`~sparkrag.retrieval.rerank`: an optional cross-encoder re-ranking stage;
- :mod:`~sparkrag.retrieval.search`: ``retrieve_contexts``, which runs the searches, the
  fusion and the post-query filters (distance, dedupe, per-document cap, top-k).
"""
