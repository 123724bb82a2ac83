"""Evaluate one answer run: retrieval recall@k/MRR, SQuAD EM/F1, abstention, latency, tokens, ANN audit.

Spark joins the questions table (with gold columns) to the answers of one run on
``question_id`` and computes each question's gold rank; the per-question rows (small)
are then scored with pandas on the driver (:func:`sparkrag.pipelines.report.score_questions`):

* retrieval: recall@k (the gold document among the contexts of rank <= k) and MRR, on
  questions with a gold document id;
* answers: exact match and token F1 with SQuAD's normalisation, max over the gold
  answers, on answerable questions only (an abstention predicts the empty answer);
* abstention: precision/recall/F1 of the answers table's ``abstained`` flag against
  ``is_impossible`` (null ``abstained`` counts as answered);
* latency p50/p95/mean, prompt/completion token totals and means, errors.

:func:`ann_audit` measures how much of the exact top-k the HNSW index returns. Results go
to the metrics table (:data:`METRICS_SCHEMA`), a Markdown report with plots, and the runs
table. Metrics with no data (no unanswerable question, no abstention...) are left out.

Example:
    >>> result = evaluate_run(spark, RagConfig(), EvalOptions(ann_sample=0))  # doctest: +SKIP
    >>> result["metrics"]["recall@5"]  # doctest: +SKIP
    0.86
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.sql.types import (DoubleType, IntegerType, LongType, StringType, StructField, StructType,
                               TimestampType)

from sparkrag.config import RagConfig
from sparkrag.errors import ConfigError, ModelContractError, SchemaError, TableError
from sparkrag.pipelines.report import Metric, exact_match, normalize_answer, score_questions, token_f1, write_report
from sparkrag.schemas import require_columns

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from sparkrag.delta import Tables

__all__ = [
    "EvalOptions",
    "METRICS_SCHEMA",
    "check_options",
    "latest_run_id",
    "question_frame",
    "exact_top_k",
    "ann_audit",
    "evaluate_run",
    # scoring lives in sparkrag.pipelines.report (no Spark); re-exported for callers of this module
    "Metric",
    "normalize_answer",
    "exact_match",
    "token_f1",
    "score_questions",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and where the gold labels are in the questions table."""

    run_id: str | None = None  # None: the latest answer run (by created_at) in the answers table
    gold_doc_column: str | None = "doc_id"  # the document that answers the question; None: no retrieval metrics
    gold_answers_column: str | None = "answers"  # array<string>; empty when unanswerable; None: no EM/F1
    impossible_column: str | None = "is_impossible"  # boolean; None: no abstention metrics
    ks: tuple[int, ...] = (1, 3, 5, 10)  # recall@k cut-offs; k above retrieval.top_k equals recall@top_k
    ann_sample: int = 200  # questions embedded for the ANN audit (a few seconds on CPU); 0 disables it
    ann_k: int = 10  # ANN recall@k compares the top-k lists
    seed: int = 0  # the ANN audit's (and the mode comparison's) question sample
    # retrieval modes compared side by side on the questions with a gold document (needs
    # the lexical index for lexical/hybrid); () skips the comparison
    compare_modes: tuple[str, ...] = ()
    compare_sample: int = 0  # questions in the comparison; 0: every question with a gold document
    report_dir: str | None = "reports/{eval_run_id}"  # report.md + PNGs; None: no report


# One row per (eval_run_id, run_id, metric, k); ``n``: how many questions (or queries) it averages.
METRICS_SCHEMA = StructType([
    StructField("eval_run_id", StringType(), False),
    StructField("run_id", StringType(), False),  # the answer run evaluated
    StructField("metric", StringType(), False),  # recall, mrr, exact_match, f1, abstention_precision, ...
    StructField("k", IntegerType(), True),  # the cut-off of @k metrics, else null
    StructField("value", DoubleType(), False),
    StructField("n", LongType(), True),
    StructField("model_id", StringType(), True),  # of the answers
    StructField("embedding_model", StringType(), True),
    StructField("created_at", TimestampType(), False),
])


# ---- inputs ----

def check_options(opts: EvalOptions) -> None:
    """Raise ConfigError naming the first option out of range."""
    if not opts.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in opts.ks):
        raise ConfigError(f"ks: expected positive integers, got {opts.ks!r}")
    if opts.ann_sample < 0:
        raise ConfigError(f"ann_sample: expected >= 0 (0 disables the audit), got {opts.ann_sample}")
    from sparkrag.pipelines.compare import MODES

    unknown = [m for m in opts.compare_modes if m not in MODES]
    if unknown:
        raise ConfigError(f"compare_modes (--compare-modes): expected some of {', '.join(MODES)}, got {unknown}")
    if opts.compare_sample < 0:
        raise ConfigError(f"compare_sample: expected >= 0 (0: every question), got {opts.compare_sample}")
    if opts.ann_k < 1:
        raise ConfigError(f"ann_k: expected >= 1, got {opts.ann_k}")
    if opts.report_dir:
        try:
            opts.report_dir.format(eval_run_id="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"report_dir: only {{eval_run_id}} may be substituted, got {opts.report_dir!r} "
                              f"({type(exc).__name__}: {exc})") from None


def _check_questions(df: "DataFrame", cfg: RagConfig, opts: EvalOptions, table: str) -> None:
    wanted = {cfg.questions.id: "questions.id"}
    if opts.ann_sample:
        wanted[cfg.questions.question] = "questions.question, for the ANN audit"
    for option in ("gold_doc_column", "gold_answers_column", "impossible_column"):
        if getattr(opts, option):
            wanted[getattr(opts, option)] = f"{option}, --{option.replace('_', '-')}"
    require_columns(df.schema, wanted, where=f"questions table {table}")
    types = dict(df.dtypes)
    expect = {opts.gold_answers_column: "array<string>", opts.impossible_column: "boolean"}
    for col, dtype in expect.items():
        if col and types[col] != dtype:
            raise SchemaError(f"questions table {table}: gold column {col!r} must be {dtype}, got {types[col]}")


_ANSWER_COLUMNS = ("question_id", "answer", "abstained", "contexts", "latency_ms", "prompt_tokens",
                   "completion_tokens", "error", "model_id", "embedding_model", "run_id", "created_at")


def latest_run_id(answers: "DataFrame") -> str:
    """The run whose newest answer row is the newest in the table.

    Raises:
        TableError: the table holds no answers.
    """
    from pyspark.sql import functions as F

    row = (answers.groupBy("run_id").agg(F.max("created_at").alias("last"))
           .orderBy(F.desc("last"), F.desc("run_id")).first())
    if row is None:
        raise TableError("the answers table holds no answer run to evaluate")
    return str(row["run_id"])


def question_frame(questions: "DataFrame", answers: "DataFrame", cfg: RagConfig, opts: EvalOptions) -> "DataFrame":
    """One row per question answered in the run: gold labels, answer, gold rank, cost columns.

    ``answers`` must already be filtered to one run. ``gold_rank`` is the smallest context
    ``rank`` whose ``doc_id`` is the gold document (null when absent or no gold).
    """
    from pyspark.sql import functions as F

    def col(name: str | None, dtype: str):
        return F.col(f"`{name}`") if name else F.lit(None).cast(dtype)

    q = questions.select(
        F.col(f"`{cfg.questions.id}`").cast("string").alias("question_id"),
        col(cfg.questions.question if cfg.questions.question in questions.columns else None,
            "string").cast("string").alias("_question"),
        col(opts.gold_doc_column, "string").cast("string").alias("gold_doc_id"),
        col(opts.gold_answers_column, "array<string>").alias("gold_answers"),
        col(opts.impossible_column, "boolean").alias("is_impossible"))
    empty = F.array().cast(answers.schema["contexts"].dataType)
    a = answers.select("question_id", "answer", "abstained", "latency_ms", "prompt_tokens", "completion_tokens",
                       "error", "model_id", "embedding_model",
                       F.coalesce(F.col("contexts"), empty).alias("contexts"))
    gold_rank = F.array_min(F.transform(F.filter("contexts", lambda c: c["doc_id"] == F.col("gold_doc_id")),
                                        lambda c: c["rank"]))
    return (a.join(q, "question_id", "inner")
            .select("*", F.size("contexts").alias("n_contexts"), gold_rank.alias("gold_rank")).drop("contexts"))


# ---- ANN audit: HNSW top-k against the exact top-k over the chunks table ----

def exact_top_k(chunks: "DataFrame", queries: np.ndarray, *, k: int, space: str) -> list[list[str]]:
    """The exact ``k`` nearest chunk ids per query, computed on the executors with :class:`ExactIndex`.

    Each task keeps a running top-k per query over its Arrow batches; the driver merges
    the tasks' lists (ties broken by chunk_id).

    Raises:
        SchemaError: ``chunk_id`` or ``embedding`` is missing (before any Spark action).
        ModelContractError: a chunk's embedding dimension differs from the queries'.
    """
    require_columns(chunks.schema, {"chunk_id": "exact index ids", "embedding": "exact index vectors"},
                    where="chunks table (ANN audit)")
    q = np.asarray(queries, dtype=np.float32)
    dim = q.shape[1]

    def top(batches):
        import pandas as pd

        from sparkrag.index.exact import ExactIndex

        best_ids, best_d = np.empty((len(q), 0), dtype=object), np.empty((len(q), 0))
        for pdf in batches:
            bad = [(c, len(v)) for c, v in zip(pdf["chunk_id"], pdf["embedding"]) if v is None or len(v) != dim]
            if bad:
                raise ModelContractError(f"chunk {bad[0][0]!r}: expected an embedding of dimension {dim} (the "
                                         f"query encoder's), got {bad[0][1]} ({len(bad)} such chunks in a batch)")
            if not len(pdf):
                continue
            index = ExactIndex(pdf["chunk_id"].tolist(), np.stack(pdf["embedding"].tolist()), [""] * len(pdf),
                               [{}] * len(pdf), space)
            res = index.query(query_embeddings=q, n_results=k, include=["distances"])
            ids = np.concatenate([best_ids, np.array(res["ids"], dtype=object)], axis=1)
            dist = np.concatenate([best_d, np.array(res["distances"], dtype=np.float64)], axis=1)
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]
            best_ids, best_d = np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)
        yield pd.DataFrame({"q": np.repeat(np.arange(len(q)), best_ids.shape[1]),
                            "chunk_id": best_ids.reshape(-1).astype(str), "distance": best_d.reshape(-1)})

    found = chunks.select("chunk_id", "embedding").mapInPandas(top, "q int, chunk_id string, distance double")
    merged = found.toPandas().sort_values(["q", "distance", "chunk_id"], kind="stable")
    per_query = merged.groupby("q")["chunk_id"].apply(lambda s: s.head(k).tolist()).to_dict()
    return [per_query.get(i, []) for i in range(len(q))]


def _hnsw_settings(collection: Any) -> dict[str, Any]:
    import warnings

    with warnings.catch_warnings():  # embedding_function=None is a "legacy" config that warns on every read
        warnings.simplefilter("ignore", DeprecationWarning)
        conf = collection.configuration or {}
    return dict(conf.get("hnsw") or {})


def ann_audit(spark: "SparkSession", cfg: RagConfig, *, questions_pdf: "pd.DataFrame", k: int = 10,
              sample: int = 200, seed: int = 0, tables: "Tables | None" = None) -> dict[str, Any]:
    """ANN recall@k: the share of the exact top-k that Chroma's HNSW index returns, averaged.

    Embeds ``sample`` questions (query role), queries ``cfg.chroma.collection`` (HNSW
    settings as stored; ``cfg.chroma.hnsw_search_ef`` is applied like the answer job does)
    and the exact index over ``cfg.names.chunks``'s embeddings, in the collection's space.

    Args:
        questions_pdf: pandas frame with the question column ``cfg.questions.question``.
        k: top-k compared (capped at the number of chunks).
        sample: questions drawn (without replacement, ``seed``) from ``questions_pdf``.

    Returns:
        ``ann_recall`` (mean), ``ann_recall_min``, ``k``, ``queries``, ``chunks``,
        ``collection_count``, the stored ``hnsw`` settings and ``per_query`` recalls.

    Raises:
        ConfigError: ``k`` or ``sample`` < 1. SchemaError: no question column or no question.
        VectorStoreError: the collection is missing or built for another encoder/space.

    Example:
        >>> ann_audit(spark, cfg, questions_pdf=pdf, k=10, sample=200)["ann_recall"]  # doctest: +SKIP
        0.997
    """
    from sparkrag.embed import check_vectors, encoder_info, make_encode_fn
    from sparkrag.delta import open_tables
    from sparkrag.index.shards import make_index_fn, resolve_shards

    if k < 1 or sample < 1:
        raise ConfigError(f"ann audit: expected k >= 1 and sample >= 1, got k={k}, sample={sample}")
    column = cfg.questions.question
    if column not in questions_pdf.columns:
        raise SchemaError(f"ann audit: questions have no column {column!r} (questions.question); "
                          f"found {list(questions_pdf.columns)}")
    texts = questions_pdf[column].dropna().astype(str)
    texts = texts[texts.str.strip() != ""]
    if not len(texts):
        raise SchemaError(f"ann audit: no non-empty question in column {column!r}")
    picked = texts.sample(n=min(sample, len(texts)), random_state=seed).tolist()
    model_id, dim = encoder_info(cfg.encoder, "query")
    vectors = check_vectors(make_encode_fn(cfg.encoder, role="query")()(picked), rows=len(picked), dim=dim,
                            model=model_id)
    collection = make_index_fn(cfg.chroma, resolve_shards(cfg.chroma, spark), embedding_model=cfg.encoder.model,
                               dim=dim)()  # one Chroma collection, or the shards queried as one
    tables = tables or open_tables(spark, cfg.tables)
    chunks = tables.read(cfg.names.chunks)
    exact = exact_top_k(chunks, vectors, k=k, space=cfg.chroma.space)
    n_chunks, count = chunks.count(), collection.count()
    if n_chunks != count:
        log.warning("ANN audit: chunks table has %d chunks, collection %r %d vectors: recall compares unlike sets",
                    n_chunks, cfg.chroma.collection, count)
    ann: list[list[str]] = []
    step = cfg.retrieval.query_batch_size
    for lo in range(0, len(picked), step):
        ann += collection.query(query_embeddings=vectors[lo:lo + step], n_results=max(1, min(k, count)),
                                include=["distances"])["ids"]
    recalls = [len(set(a) & set(e)) / len(e) for a, e in zip(ann, exact) if e]
    result = {"ann_recall": float(np.mean(recalls)) if recalls else 0.0,
              "ann_recall_min": float(np.min(recalls)) if recalls else 0.0, "k": min(k, n_chunks),
              "queries": len(recalls), "chunks": n_chunks, "collection_count": count,
              "hnsw": _hnsw_settings(getattr(collection, "shards", [collection])[0]), "per_query": recalls}
    log.info("ANN audit on %r: recall@%d %.4f (min %.2f) over %d queries, hnsw %s", cfg.chroma.collection,
             result["k"], result["ann_recall"], result["ann_recall_min"], len(recalls), result["hnsw"])
    return result


# ---- the job ----

def evaluate_run(spark: "SparkSession", cfg: RagConfig, opts: EvalOptions = EvalOptions(), *,
                 eval_run_id: str | None = None) -> dict[str, Any]:
    """Evaluate one answer run; write the metrics table, the report and a runs-table row.

    Args:
        cfg: table names (``names.questions``, ``names.answers``, ``names.metrics``,
            ``names.runs``, ``names.chunks`` for the audit), question columns, encoder, Chroma.
        opts: the run, the gold columns, k values, ANN audit size, report folder.
        eval_run_id: id of this evaluation; default a new ``evaluate-...`` id.

    Returns:
        ``eval_run_id``, ``run_id`` (the answer run), ``metrics`` (``name`` or ``name@k`` ->
        value), ``counts``, ``confusion`` (abstention), ``ann_audit`` (or None), ``report``
        (file paths, or None) and ``metrics_table``.

    Raises:
        ConfigError: an option out of range. SchemaError: a named column is missing or of
        the wrong type, or question ids repeat. TableError: a table is missing or the run
        has no answers. VectorStoreError: (audit) the collection is missing or foreign.

    Example:
        >>> evaluate_run(spark, cfg, EvalOptions(run_id="answer-2024...", ann_sample=0))  # doctest: +SKIP
    """
    from sparkrag.pipelines.runs import RunRecorder, new_run_id, write_run_record
    from sparkrag.delta import open_tables

    check_options(opts)
    tables = open_tables(spark, cfg.tables)
    rec = RunRecorder("evaluate", cfg, eval_run_id or new_run_id("evaluate"), embedding_model=cfg.encoder.model)
    rec.outputs = {"metrics": tables.location(cfg.names.metrics), "runs": tables.location(cfg.names.runs)}
    try:
        result = _evaluate(spark, tables, cfg, opts, rec)
    except BaseException as exc:
        write_run_record(tables, cfg.names.runs, rec.record("failed", f"{type(exc).__name__}: {exc}"[:4000]))
        raise
    write_run_record(tables, cfg.names.runs, rec.record("succeeded"))
    return result


def _evaluate(spark: "SparkSession", tables: "Tables", cfg: RagConfig, opts: EvalOptions, rec: Any) -> dict[str, Any]:
    from pyspark.sql import functions as F

    names = cfg.names
    for option, table in (("names.questions", names.questions), ("names.answers", names.answers)):
        if not tables.exists(table):
            raise TableError(f"{option}: no Delta table {table} ({tables.location(table)})")
    questions, answers = tables.read(names.questions), tables.read(names.answers)
    _check_questions(questions, cfg, opts, names.questions)
    require_columns(answers.schema, {c: "ANSWERS_SCHEMA" for c in _ANSWER_COLUMNS},
                    where=f"answers table {names.answers}")
    rec.input_versions.update({names.questions: tables.version(names.questions),
                               names.answers: tables.version(names.answers)})
    run_id = opts.run_id or latest_run_id(answers)
    run = answers.where(F.col("run_id") == run_id)
    with rec.stage("join"):
        counts = {"questions": questions.count(), "answers": run.count()}
        if counts["answers"] == 0:
            raise TableError(f"answer run {run_id!r} has no rows in {names.answers}; "
                             "omit --run-id to evaluate the latest run")
        pdf = question_frame(questions, run, cfg, opts).toPandas()
        counts["evaluated"] = len(pdf)
    dupes = pdf["question_id"][pdf["question_id"].duplicated()].unique().tolist()
    if dupes:
        raise SchemaError(f"questions table {names.questions}: question id(s) repeat in column "
                          f"{cfg.questions.id!r} (questions.id), e.g. {dupes[:5]}")
    counts.update({"unanswered_questions": counts["questions"] - len(pdf),
                   "answers_without_gold": counts["answers"] - len(pdf)})
    log.info("evaluating answer run %s: %s", run_id, counts)
    with rec.stage("score"):
        metrics, confusion = score_questions(pdf, opts.ks)
    audit = None
    if opts.ann_sample:
        with rec.stage("ann_audit"):
            rec.input_versions[names.chunks] = tables.version(names.chunks)
            audit = ann_audit(spark, cfg, questions_pdf=pdf.rename(columns={"_question": cfg.questions.question}),
                              k=opts.ann_k, sample=opts.ann_sample, seed=opts.seed, tables=tables)
            metrics.append(Metric("ann_recall", audit["ann_recall"], audit["k"], audit["queries"]))
    modes = None
    if opts.compare_modes and opts.gold_doc_column:
        from sparkrag.pipelines.compare import compare_retrieval_modes

        with rec.stage("compare_modes"):
            modes = compare_retrieval_modes(spark, cfg, modes=opts.compare_modes, ks=opts.ks,
                                            gold_column=opts.gold_doc_column, sample=opts.compare_sample,
                                            seed=opts.seed, tables=tables)
        metrics += [_mode_metric(mode, key, value, int(row["queries"])) for mode, row in modes.items()
                    for key, value in row.items() if key != "queries"]
    models = pdf["model_id"].dropna().unique().tolist()
    rec.model_id = models[0] if models else None
    with rec.stage("write_metrics"):
        tables.write(_metrics_frame(spark, metrics, rec.run_id, run_id, rec.model_id, pdf), names.metrics)
    report = None
    if opts.report_dir:
        with rec.stage("report"):
            report = write_report(opts.report_dir.format(eval_run_id=rec.run_id), metrics, pdf, confusion=confusion,
                                  audit=audit, eval_run_id=rec.run_id, run_id=run_id, counts=counts, ks=opts.ks,
                                  modes=modes)
        rec.outputs["report"] = report["report.md"]
    rec.counts.update(counts)
    rec.metrics.update({m.key: m.value for m in metrics})
    return {"eval_run_id": rec.run_id, "run_id": run_id, "metrics": dict(rec.metrics), "counts": counts,
            "confusion": confusion, "ann_audit": audit, "modes": modes, "report": report,
            "metrics_table": tables.location(names.metrics)}


def _mode_metric(mode: str, key: str, value: float, n: int) -> Metric:
    """``recall@5`` of mode ``hybrid`` -> Metric("hybrid_recall", value, 5, n)."""
    name, _, k = key.partition("@")
    return Metric(f"{mode}_{name}", value, int(k) if k else None, n)


def _metrics_frame(spark: "SparkSession", metrics: list[Metric], eval_run_id: str, run_id: str,
                   model_id: str | None, pdf: "pd.DataFrame") -> "DataFrame":
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    embedding = next(iter(pdf["embedding_model"].dropna().unique().tolist()), None)
    rows = [(eval_run_id, run_id, m.name, m.k, float(m.value), m.n, model_id, embedding, now) for m in metrics]
    return spark.createDataFrame(rows, METRICS_SCHEMA)
