"""Retrieval modes side by side: recall@k and MRR of dense, lexical and hybrid on the same questions.

The evaluation job's ``--compare-modes``: each question with a gold document id is
retrieved once per mode (or named variant, :data:`VARIANTS`) by the answer job's own retrieval
stage on the executors (:func:`sparkrag.pipelines.answer_retrieval.plan_retrieval`: replicated or
partitioned, ANN or exact, with the configured filters and post-query filters; the re-ranker is
left out: it would hide the retrievers' differences). The driver holds the questions and
their ranks, never the index.

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
    from pyspark.sql import DataFrame, SparkSession

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


def _questions(tables: "Tables", cfg: RagConfig, gold_column: str, sample: int, seed: int) -> "DataFrame":
    """The questions with a gold document (a ``seed``-ed sample of ``sample``): question_id, question, _gold, filters."""
    from pyspark.sql import functions as F

    q, r = cfg.questions, cfg.retrieval
    extra = sorted(set(r.where_columns.values()) | ({r.where_document_column} if r.where_document_column else set()))
    df = tables.read(cfg.names.questions)
    missing = [c for c in [q.question, gold_column, *extra] if c not in df.columns]
    if missing:
        raise SchemaError(f"compare modes: questions table {cfg.names.questions} lacks column(s) {missing}")
    df = (df.where(F.col(f"`{gold_column}`").isNotNull() & (F.trim(F.col(f"`{q.question}`")) != ""))
          .select(F.monotonically_increasing_id().alias("_n"), F.col(f"`{q.question}`").alias("question"),
                  F.col(f"`{gold_column}`").cast("string").alias("_gold"),
                  *[F.col(f"`{c}`").alias(f"_f_{c}") for c in extra]).cache())
    ids = df.select("_n").toPandas()["_n"]  # one number per question
    if sample and len(ids) > sample:
        df = df.where(F.col("_n").isin(ids.sample(n=sample, random_state=seed).tolist()))
    history = F.lit(None).cast("array<struct<role:string,content:string>>")
    return df.select(F.col("_n").cast("string").alias("question_id"), "question", history.alias("history"), "_gold",
                     *[c for c in df.columns if c.startswith("_f_")])


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
        mode -> ``{"recall@k"..., "mrr", "queries_per_s", "queries"}`` (queries/s of the whole
        Spark retrieval stage: encoding the questions included).

    Raises:
        ConfigError: an unknown mode or a bad k. SchemaError: a column is missing.
        VectorStoreError: the vector or lexical index is missing.
    """
    from pyspark.sql import functions as F

    from sparkrag.delta import open_tables
    from sparkrag.embed import encoder_info
    from sparkrag.pipelines.answer_retrieval import plan_retrieval
    from sparkrag.pipelines.runs import RunRecorder

    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError(f"compare_modes: expected some of {', '.join(MODES)}, got {list(modes)}")
    if not ks or min(ks) < 1:
        raise ConfigError(f"ks: expected positive integers, got {list(ks)}")
    tables = tables or open_tables(spark, cfg.tables)
    questions = _questions(tables, cfg, gold_column, sample, seed).cache()
    n = questions.count()
    if not n:
        return {}
    _, dim = encoder_info(cfg.encoder, "query")
    top = max(ks)
    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        base, options, title_weight = VARIANTS[mode]
        variant = dataclasses.replace(cfg, retrieval=dataclasses.replace(
            cfg.retrieval, **{**options, "mode": base, "top_k": top, "rerank_model": None,
                              "fetch_k": max(cfg.retrieval.fetch_k, top)}))
        rec = RunRecorder("evaluate", variant, f"compare-{mode}")
        rec.counts["questions"] = n
        start = time.perf_counter()
        retrieval = plan_retrieval(spark, tables, variant, rec, dim, title_weight=title_weight)
        try:
            rows = (retrieval(questions.drop("_gold")).join(questions.select("question_id", "_gold"), "question_id")
                    .select("_gold", F.col("contexts.doc_id").alias("docs")).collect())  # one row per question
        finally:
            retrieval.close()
        seconds = time.perf_counter() - start
        ranks = np.array([next((k + 1 for k, d in enumerate(r["docs"] or []) if d == r["_gold"]), 0) for r in rows])
        found = ranks > 0
        out[mode] = {**{f"recall@{k}": float(np.mean(found & (ranks <= k))) for k in ks},
                     "mrr": float(np.mean(np.where(found, 1.0 / np.maximum(ranks, 1), 0.0))),
                     "queries_per_s": n / max(seconds, 1e-9), "queries": n}
        log.info("retrieval mode %s over %d questions (%s): %s", mode, n, rec.outputs.get("shard_access"), out[mode])
    questions.unpersist()
    return out
