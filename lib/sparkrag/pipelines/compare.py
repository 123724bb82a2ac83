"""Retrieval modes side by side: recall@k and MRR of dense, lexical and hybrid on the same questions.

The evaluation job's ``--compare-modes``: each question with a gold document id is
retrieved once per mode (or named variant, :data:`VARIANTS`) through
:func:`sparkrag.retrieval.search.retrieve_contexts`, the answer job's own code, with the configured
filters and post-query filters (the re-ranker is left out: it would hide the retrievers'
differences). Runs on the driver: a sample of a few
thousand questions takes seconds per mode.

Variants set one retrieval option each on top of the configured ones, so a run shows what
each option of issue #16 buys: ``hybrid-rrf`` is reciprocal rank fusion (k=60, equal
weights, the default before issue #16), ``hybrid-weighted`` min-max fusion, ``hybrid-zscore``
z-score fusion, ``hybrid-docmax``/``hybrid-docsum`` document aggregation,
``lexical-notitle``/``hybrid-notitle`` BM25 without the title field. What the lexical
index was built with (stemming, accent folding) is fixed at ingest: compare those with two
ingests (benchmarks/README.md, issue #16).

Example:
    >>> compare_retrieval_modes(spark, cfg, modes=("dense", "hybrid", "hybrid-rrf"), ks=(1, 5))  # doctest: +SKIP
    {'dense': {'recall@1': 0.52, ..., 'mrr': 0.63, 'queries_per_s': 410.0, 'queries': 100}, ...}
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from sparkrag.config import RagConfig
from sparkrag.errors import ConfigError, SchemaError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from sparkrag.delta import Tables

__all__ = ["compare_retrieval_modes", "MODES", "VARIANTS"]

log = logging.getLogger(__name__)

_RRF = {"fusion": "rrf", "rrf_k": 60, "weights": {"dense": 1.0, "lexical": 1.0}}
# name -> (retrieval.mode, retrieval options replaced, lexical title weight or None to keep the index's)
VARIANTS: dict[str, tuple[str, dict[str, Any], float | None]] = {
    "dense": ("dense", {}, None),
    "lexical": ("lexical", {}, None),
    "hybrid": ("hybrid", {}, None),
    "hybrid-rrf": ("hybrid", _RRF, None),
    "hybrid-weighted": ("hybrid", {"fusion": "weighted"}, None),
    "hybrid-zscore": ("hybrid", {"fusion": "zscore"}, None),
    "hybrid-docmax": ("hybrid", {"doc_aggregation": "max"}, None),
    "hybrid-docsum": ("hybrid", {"doc_aggregation": "sum"}, None),
    "lexical-notitle": ("lexical", {}, 0.0),
    "hybrid-notitle": ("hybrid", {}, 0.0),
    "hybrid-rrf-notitle": ("hybrid", _RRF, 0.0),
}
MODES = tuple(VARIANTS)


def _questions(tables: "Tables", cfg: RagConfig, gold_column: str, sample: int, seed: int) -> "pd.DataFrame":
    from pyspark.sql import functions as F

    q, r = cfg.questions, cfg.retrieval
    extra = sorted(set(r.where_columns.values()) | ({r.where_document_column} if r.where_document_column else set()))
    df = tables.read(cfg.names.questions)
    missing = [c for c in [q.question, gold_column, *extra] if c not in df.columns]
    if missing:
        raise SchemaError(f"compare modes: questions table {cfg.names.questions} lacks column(s) {missing}")
    pdf = (df.where(F.col(f"`{gold_column}`").isNotNull() & (F.trim(F.col(f"`{q.question}`")) != ""))
           .select(F.col(f"`{q.question}`").alias("_question"), F.col(f"`{gold_column}`").cast("string").alias("_gold"),
                   *[F.col(f"`{c}`") for c in extra]).toPandas())
    if sample and len(pdf) > sample:
        pdf = pdf.sample(n=sample, random_state=seed)
    return pdf.reset_index(drop=True)


def _dense_index(spark: "SparkSession", tables: "Tables", cfg: RagConfig, dim: int) -> Any:
    if cfg.retrieval.vector_search == "exact":
        from sparkrag.index.sync import chroma_rows
        from sparkrag.index.exact import ExactIndex

        return ExactIndex.from_chunks(chroma_rows(tables.read(cfg.names.chunks)).toPandas(), cfg.chroma.space)
    from sparkrag.index.shards import make_index_fn, resolve_shards

    return make_index_fn(cfg.chroma, resolve_shards(cfg.chroma, spark), embedding_model=cfg.encoder.model, dim=dim)()


def compare_retrieval_modes(spark: "SparkSession", cfg: RagConfig, *, modes: Sequence[str] = MODES,
                            ks: Sequence[int] = (1, 5, 10), gold_column: str = "doc_id", sample: int = 0,
                            seed: int = 0, tables: "Tables | None" = None) -> dict[str, dict[str, float]]:
    """recall@k, MRR and queries/s per retrieval mode over the questions with a gold document.

    Args:
        modes: names of :data:`VARIANTS` (``dense``, ``lexical``, ``hybrid``: as configured).
        ks: recall cut-offs; retrieval keeps ``max(ks)`` contexts.
        gold_column: the questions table's gold document id column.
        sample: questions drawn at random (``seed``); 0: all of them.

    Returns:
        mode -> ``{"recall@k"..., "mrr", "queries_per_s", "queries"}``.

    Raises:
        ConfigError: an unknown mode or a bad k. SchemaError: a column is missing.
        VectorStoreError: the vector or lexical index is missing.
    """
    from sparkrag.embed import check_vectors, encoder_info, make_encode_fn
    from sparkrag.index.lexical_shards import load_published
    from sparkrag.retrieval.search import retrieve_contexts
    from sparkrag.delta import open_tables

    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"compare_modes: expected some of {', '.join(MODES)}, got {list(modes)}")
    if not ks or min(ks) < 1:
        raise ConfigError(f"ks: expected positive integers, got {list(ks)}")
    tables = tables or open_tables(spark, cfg.tables)
    pdf = _questions(tables, cfg, gold_column, sample, seed)
    if not len(pdf):
        return {}
    model_id, dim = encoder_info(cfg.encoder, "query")
    texts = pdf["_question"].astype(str).tolist()
    vectors = check_vectors(make_encode_fn(cfg.encoder, role="query")()(texts), rows=len(texts), dim=dim,
                            model=model_id)
    index = _dense_index(spark, tables, cfg, dim)
    needs_lexical = any(VARIANTS[m][0] != "dense" for m in modes)
    lexical = load_published(cfg.lexical.path) if needs_lexical else None
    extra = [c for c in pdf.columns if c not in ("_question", "_gold")]
    rows = [{c: pdf.at[i, c] for c in extra} for i in range(len(pdf))]  # to_dict("records") of 0 columns is []
    top = max(ks)
    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        base, options, title_weight = VARIANTS[mode]
        retrieval = dataclasses.replace(cfg.retrieval, **{**options, "mode": base, "top_k": top, "rerank_model": None,
                                                          "fetch_k": max(cfg.retrieval.fetch_k, top)})
        lexical_view = lexical if lexical is None or title_weight is None else lexical.with_title_weight(title_weight)
        start = time.perf_counter()
        contexts, _ = retrieve_contexts(rows, vectors, cfg=retrieval, index=index, lexical=lexical_view,
                                        query_texts=texts, space=cfg.chroma.space)
        seconds = time.perf_counter() - start
        ranks = np.array([next((c["rank"] for c in cs if c["doc_id"] == gold), 0)
                          for cs, gold in zip(contexts, pdf["_gold"])])
        found = ranks > 0
        out[mode] = {**{f"recall@{k}": float(np.mean(found & (ranks <= k))) for k in ks},
                     "mrr": float(np.mean(np.where(found, 1.0 / np.maximum(ranks, 1), 0.0))),
                     "queries_per_s": len(texts) / max(seconds, 1e-9), "queries": len(texts)}
        log.info("retrieval mode %s over %d questions: %s", mode, len(texts), out[mode])
    return out
