"""The jobs' pipelines, which put the stages together; ``jobs/*.py`` call one function each.

- :mod:`~sparkrag.pipelines.ingest`: documents -> chunks -> embeddings -> Delta -> index;
- :mod:`~sparkrag.pipelines.answer` with :mod:`~.answer_stages` (the retrieve and generate
  executor stages) and :mod:`~.answer_staging` (checkpointed batches, the final MERGE);
- :mod:`~sparkrag.pipelines.evaluate` with :mod:`~.compare` (retrieval modes side by side)
  and :mod:`~.report` (the report files);
- :mod:`~sparkrag.pipelines.sql`: SQL over the result tables (``sparkrag-sql``);
- :mod:`~sparkrag.pipelines.runs`: run records and rejects; :mod:`~.locks` and
  :mod:`~.preflight`: what every run checks and holds before it plans any work.
"""
