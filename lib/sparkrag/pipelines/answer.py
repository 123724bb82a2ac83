"""The answer job: questions -> retrieval with filters -> ChatQA (or extractive) answers -> Delta.

Two Spark stages:

1. **retrieve** (CPU tasks): embed each batch of questions with the query encoder, search
   Chroma (a server, a shipped snapshot or a shared directory) or the exact index, apply
   the pre-, in- and post-query filters, and (ChatQA) pack the prompt within the model's
   window. One failing row records its error; the batch goes on.
2. **generate**: greedy batched generation with the causal LM, in tasks that ask for a
   GPU through a Spark ResourceProfile (``generator.task_gpus``) so that retrieval does
   not hold GPUs; or the extractive answerer (CPU, no LLM).

Every row is written with the exact contexts its answer was given, the filters applied,
token counts, latency and lineage, merged on ``(question_id, run_id)`` so a rerun of the
same run replaces rows instead of duplicating them (``--resume`` answers only the questions
without a successful answer).

Generated rows are committed batch by batch to a staging table first
(:mod:`sparkrag.pipelines.answer_staging`); the MERGE reads them, so a killed run rerun with the same
run id regenerates nothing that was staged. A run with more than ``answer.max_error_rate``
failed rows is recorded as failed and raises :class:`sparkrag.errors.RunFailedError`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sparkrag.config import RagConfig
from sparkrag.errors import RunFailedError, SchemaError
from sparkrag.pipelines.preflight import check_outputs, job_lock
from sparkrag.pipelines.runs import RunRecorder, new_run_id, rejects_frame, write_run_record
from sparkrag.schemas import require_columns

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from sparkrag.delta import Tables

__all__ = ["run_answer", "check_questions"]

log = logging.getLogger(__name__)


def check_questions(df: "DataFrame", cfg: RagConfig, *, table: str) -> None:
    """Fail before any work when a column the config names is missing or of the wrong type."""
    q, r = cfg.questions, cfg.retrieval
    wanted = {q.id: "questions.id", q.question: "questions.question"}
    if q.history:
        wanted[q.history] = "questions.history"
    wanted.update({col: f"retrieval.where_columns.{key}" for key, col in r.where_columns.items()})
    if r.where_document_column:
        wanted[r.where_document_column] = "retrieval.where_document_column"
    types = dict(df.dtypes)
    require_columns(list(types), {c: f"option {opt}" for c, opt in wanted.items()}, where=f"questions table {table}")
    if types[q.question] != "string":
        raise SchemaError(f"questions table {table}: column {q.question!r} (questions.question) must be a string, "
                          f"got {types[q.question]}")
    if q.history and not types[q.history].startswith("array<struct<role:string,content:string"):
        raise SchemaError(f"questions table {table}: column {q.history!r} (questions.history) must be "
                          f"array<struct<role:string,content:string>>, got {types[q.history]}")


def run_answer(spark: "SparkSession", cfg: RagConfig) -> dict[str, Any]:
    """Answer the questions table; returns the run record.

    Raises:
        SchemaError: a configured column is missing (before any work).
        OutputError: an output folder (tables.root, a path-named table) cannot be written.
        LockError: another run with the same run id holds the lock for longer than
            tables.lock_wait_seconds (before any work).
        VectorStoreError: the collection is missing, unreachable or of another encoder.
        RunFailedError: more than ``answer.max_error_rate`` of the run's rows have an error
            (the rows are written and the run is recorded as failed).
    """
    from sparkrag.delta import open_tables
    from sparkrag.embed import encoder_info
    from sparkrag.generation.llm import generator_model_id

    tables = open_tables(spark, cfg.tables)
    check_outputs(tables, cfg, "answer")
    model_id, dim = encoder_info(cfg.encoder, "query")
    run_id = cfg.answer.run_id or new_run_id("answer")
    rec = RunRecorder("answer", cfg, run_id, model_id=generator_model_id(cfg), embedding_model=cfg.encoder.model)
    rec.outputs = {"answers": tables.location(cfg.names.answers), "runs": tables.location(cfg.names.runs)}
    try:
        # Two runs with one run id would both insert its rows (issue #17): one at a time.
        with job_lock(tables, cfg, "answer", run_id) as lock:
            rec.before_stage = lock.check
            _answer(spark, tables, cfg, rec, dim)
        _check_error_rate(cfg, rec)
    except BaseException as exc:
        write_run_record(tables, cfg.names.runs, rec.record("failed", f"{type(exc).__name__}: {exc}"[:4000]))
        raise
    record = rec.record("succeeded")
    write_run_record(tables, cfg.names.runs, record)
    return record


def _answer(spark: "SparkSession", tables: "Tables", cfg: RagConfig, rec: RunRecorder, dim: int) -> None:
    from sparkrag.pipelines.answer_staging import merge_staged_answers, stage_answers

    names = cfg.names
    rec.input_versions[names.questions] = tables.version(names.questions)
    questions = tables.read(names.questions)
    check_questions(questions, cfg, table=names.questions)
    with rec.stage("plan"):
        todo = _select_questions(tables, cfg, questions, rec.run_id)
        rec.counts["questions"] = todo.count()
    log.info("answer run %s: %d questions with %s (%s retrieval)", rec.run_id, rec.counts["questions"],
             rec.model_id, cfg.retrieval.mode)
    if rec.counts["questions"] == 0:  # e.g. --resume of a finished run: nothing to do, nothing written
        _summarise(tables, cfg, rec)
        return
    from sparkrag.pipelines.answer_retrieval import plan_retrieval

    with rec.stage("open_index"):
        retrieval = plan_retrieval(spark, tables, cfg, rec, dim)
    try:
        with rec.stage("retrieve_generate_write", spark):
            stage_answers(tables, cfg, rec, todo, _pipeline(spark, cfg, retrieval))
    finally:
        retrieval.close()
    with rec.stage("merge"):
        merge_staged_answers(tables, cfg, rec.run_id)
    _summarise(tables, cfg, rec)


def _pipeline(spark: "SparkSession", cfg: RagConfig, retrieve):
    """questions DataFrame -> answer rows (stage2_schema): retrieval (replicated or partitioned), then generation."""
    from sparkrag.pipelines.answer_stages import make_generate_stage, stage2_schema
    from sparkrag.spark import map_in_pandas

    generate_partitions = cfg.answer.generate_partitions or max(spark.sparkContext.defaultParallelism, 1)
    generate, profile = make_generate_stage(cfg)

    def produce(questions: "DataFrame") -> "DataFrame":
        # The repartition is the stage boundary that lets generation run under its own
        # ResourceProfile (GPU tasks) while retrieval runs on CPU tasks.
        return map_in_pandas(retrieve(questions).repartition(generate_partitions), generate, stage2_schema(),
                             profile=profile)

    return produce


def _check_error_rate(cfg: RagConfig, rec: RunRecorder) -> None:
    """Fail the run (rows kept) when more than ``answer.max_error_rate`` of its rows have an error."""
    answers, errors = rec.counts.get("answers", 0), rec.counts.get("errors", 0)
    rate = errors / answers if answers else 0.0
    rec.metrics["error_rate"] = rate
    if rate > cfg.answer.max_error_rate:
        raise RunFailedError(f"{errors} of {answers} answers of run {rec.run_id} have an error ({rate:.1%}), "
                             f"above answer.max_error_rate {cfg.answer.max_error_rate:.1%}; the rows are kept in "
                             f"{cfg.names.answers} (see their error column)")


def _select_questions(tables: "Tables", cfg: RagConfig, questions: "DataFrame", run_id: str) -> "DataFrame":
    """The questions to answer, with the columns the stages need (resume skips answered ones)."""
    from pyspark.sql import functions as F

    q, r = cfg.questions, cfg.retrieval
    extra = sorted(set(r.where_columns.values()) | ({r.where_document_column} if r.where_document_column else set()))
    history = F.col(f"`{q.history}`") if q.history else F.lit(None).cast("array<struct<role:string,content:string>>")
    questions = _reject_bad_question_ids(tables, cfg, questions, run_id)
    _heal_duplicate_answers(tables, cfg, run_id)
    todo = questions.select(
        F.col(f"`{q.id}`").cast("string").alias("question_id"), F.col(f"`{q.question}`").alias("question"),
        history.alias("history"), *[F.col(f"`{c}`").alias(f"_f_{c}") for c in extra])
    if cfg.answer.resume and tables.exists(cfg.names.answers):
        done = (tables.read(cfg.names.answers).where((F.col("run_id") == run_id) & F.col("error").isNull())
                .select("question_id"))
        todo = todo.join(done, "question_id", "left_anti")
    if cfg.answer.limit is not None:
        todo = todo.orderBy("question_id").limit(cfg.answer.limit)
    return todo


def _reject_bad_question_ids(tables: "Tables", cfg: RagConfig, questions: "DataFrame", run_id: str) -> "DataFrame":
    """Send rows with a null, blank or repeated question id to the rejects table; return the others.

    Answers are merged on ``(question_id, run_id)``: a null id failed that merge after all the
    model work, a repeated one gave two answers for one key (issue #17). Every row of a
    repeated id is rejected (which of them is meant is unknowable). A resumed run does not
    reject the same rows twice.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    q = cfg.questions
    qid = F.col(f"`{q.id}`").cast("string")
    repeats = F.count(F.lit(1)).over(Window.partitionBy(qid))
    reason = (F.when(qid.isNull(), F.lit("null question id"))
              .when(qid.rlike(r"(?U)^\s*$"), F.lit("empty question id"))
              .when(repeats > 1, F.concat(F.lit("duplicate question id ("), repeats.cast("string"), F.lit(" rows)"))))
    checked = questions.withColumn("_reason", reason).withColumn("_column", F.lit(q.id)).cache()
    bad = checked.where(F.col("_reason").isNotNull())
    rejected = bad.count()
    if rejected:
        log.warning("questions table %s: %d row(s) with a null, empty or repeated %r go to %s, unanswered",
                    cfg.names.questions, rejected, q.id, cfg.names.rejects)
        already = (cfg.answer.resume and tables.exists(cfg.names.rejects) and not tables.read(cfg.names.rejects)
                   .where((F.col("run_id") == run_id) & (F.col("job") == "answer")).isEmpty())
        if not already:
            tables.write(rejects_frame(bad, run_id=run_id, job="answer", source_table=cfg.names.questions,
                                       key_col=q.id), cfg.names.rejects, mode="append")
    return checked.where(F.col("_reason").isNull()).drop("_reason", "_column")


def _heal_duplicate_answers(tables: "Tables", cfg: RagConfig, run_id: str) -> None:
    """Delete this run's rows whose ``(question_id, run_id)`` repeats, so that they are answered once more.

    Overlapping runs of an older sparkrag left such pairs; a merge would update both copies.
    """
    from pyspark.sql import functions as F

    if not tables.exists(cfg.names.answers):
        return
    mine = tables.read(cfg.names.answers).where(F.col("run_id") == run_id)
    repeated = mine.groupBy("question_id", "run_id").count().where(F.col("count") > 1).select("question_id", "run_id")
    repeated = repeated.cache()
    found = repeated.count()
    if found:
        tables.delete_keys(repeated, cfg.names.answers, keys=["question_id", "run_id"])
        log.warning("answers table %s held %d repeated (question_id, run_id) pair(s) of run %s: deleted, "
                    "answered again", cfg.names.answers, found, run_id)
    repeated.unpersist()


def _summarise(tables: "Tables", cfg: RagConfig, rec: RunRecorder) -> None:
    from pyspark.sql import functions as F

    if not tables.exists(cfg.names.answers):
        return
    mine = tables.read(cfg.names.answers).where(F.col("run_id") == rec.run_id)
    row = mine.agg(
        F.count("*").alias("answers"),
        F.sum(F.col("abstained").cast("int")).alias("abstained"),
        F.sum(F.col("error").isNotNull().cast("int")).alias("errors"),
        F.sum("prompt_tokens").alias("prompt_tokens"),
        F.sum("completion_tokens").alias("completion_tokens"),
        F.percentile_approx("latency_ms", 0.5).alias("p50"),
        F.percentile_approx("latency_ms", 0.95).alias("p95"),
    ).first()
    answers = int(row["answers"] or 0)
    rec.counts.update({"answers": answers, "abstained": int(row["abstained"] or 0), "errors": int(row["errors"] or 0),
                       "prompt_tokens": int(row["prompt_tokens"] or 0),
                       "completion_tokens": int(row["completion_tokens"] or 0)})
    rec.metrics.update({"abstention_rate": rec.counts["abstained"] / answers if answers else 0.0,
                        "latency_ms_p50": float(row["p50"] or 0.0), "latency_ms_p95": float(row["p95"] or 0.0)})
    log.info("answer run %s: %s %s", rec.run_id, rec.counts, rec.metrics)

