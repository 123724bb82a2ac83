"""Checkpointed generation: answers committed batch by batch to a staging Delta table.

The answer job splits the questions still to answer into batches of about
``answer.checkpoint_rows`` (by a hash of ``question_id``), runs retrieval and generation on
one batch at a time and appends its rows to ``names.answers_staging`` with a Delta
transaction id (``txnAppId = sparkrag-answer:<run_id>:<attempt>``, ``txnVersion`` = the
batch number), so a retried commit is never applied twice.
The answers MERGE then reads the staged rows, and the run's staged rows are deleted.

A killed or failed run leaves its staged rows behind; a rerun with the same run id (and
the same generation settings, compared by a fingerprint of the config) generates only the
questions with no staged answer, and merges old and new staged rows together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from typing import TYPE_CHECKING, Any, Callable

from sparkrag.config import RagConfig, to_dict
from sparkrag.schemas import ANSWERS_SCHEMA, STAGED_ANSWERS_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from sparkrag.pipelines.runs import RunRecorder
    from sparkrag.delta import Tables

__all__ = ["config_fingerprint", "stage_answers", "merge_staged_answers"]

log = logging.getLogger(__name__)

# Settings that change what a generated row holds; staged rows made under other values are
# regenerated rather than reused. (answer.* run options, Spark and table locations do not.)
_FINGERPRINT_SECTIONS = ("questions", "encoder", "chroma", "lexical", "retrieval", "generator")


def config_fingerprint(cfg: RagConfig) -> str:
    """A short hash of the settings that decide a generated row (see ``_FINGERPRINT_SECTIONS``)."""
    settings = to_dict(cfg)
    payload = {k: settings[k] for k in _FINGERPRINT_SECTIONS}
    payload["answer.keep_prompt"] = cfg.answer.keep_prompt
    payload["names.questions"] = cfg.names.questions
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _staged(tables: "Tables", cfg: RagConfig, run_id: str, fingerprint: str) -> "DataFrame | None":
    from pyspark.sql import functions as F

    if not tables.exists(cfg.names.answers_staging):
        return None
    staged = tables.read(cfg.names.answers_staging)
    return staged.where((F.col("run_id") == run_id) & (F.col("config_fingerprint") == fingerprint))


def stage_answers(tables: "Tables", cfg: RagConfig, rec: "RunRecorder", todo: "DataFrame",
                  produce: Callable[["DataFrame"], "DataFrame"]) -> None:
    """Generate answers for ``todo`` questions not yet staged in this run, committing batch by batch.

    Args:
        todo: the questions of this run (``question_id`` and the stage columns).
        produce: questions -> answer rows (``stage2_schema``): retrieval and generation.

    Sets ``rec.counts``: ``reused_staged`` (answers found staged, not regenerated),
    ``generated`` (rows staged by this attempt), ``staged_batches``.
    """
    from pyspark.sql import functions as F

    staging, run_id = cfg.names.answers_staging, rec.run_id
    fingerprint = config_fingerprint(cfg)
    staged = _staged(tables, cfg, run_id, fingerprint)
    pending, next_batch = todo, 1
    if staged is not None:
        # Rows that failed are generated again; good ones are kept.
        done = staged.where(F.col("error").isNull()).select("question_id").distinct()
        pending = todo.join(done, "question_id", "left_anti")
        next_batch = int(staged.agg(F.max("batch")).first()[0] or 0) + 1
    n_pending = pending.count()
    rec.counts.update(reused_staged=rec.counts.get("questions", 0) - n_pending, generated=0, staged_batches=0)
    if n_pending == 0:
        return
    n_batches = max(math.ceil(n_pending / max(cfg.answer.checkpoint_rows, 1)), 1)
    log.info("answer run %s: %d questions to generate in %d staged batches (%d already staged)", run_id,
             n_pending, n_batches, rec.counts["reused_staged"])
    bucketed = pending.withColumn("_batch", F.pmod(F.xxhash64("question_id"), F.lit(n_batches)))
    # One transaction id per attempt: a retried commit of a batch applies once, and a later
    # rerun of the same run id (whose staged rows were merged and deleted, so its batch
    # numbers start again at 1) is not mistaken for a replay of this one.
    app_id = f"sparkrag-answer:{run_id}:{uuid.uuid4().hex[:12]}"
    for k in range(n_batches):
        batch = next_batch + k
        rows = (produce(bucketed.where(F.col("_batch") == k).drop("_batch"))
                .withColumn("run_id", F.lit(run_id)).withColumn("created_at", F.current_timestamp())
                .withColumn("batch", F.lit(batch)).withColumn("config_fingerprint", F.lit(fingerprint))
                .select(*[F.col(f.name).cast(f.dataType) for f in STAGED_ANSWERS_SCHEMA.fields]))
        tables.write(rows, staging, mode="append", txn=(app_id, batch))
        written = (tables.read(staging).where((F.col("run_id") == run_id) & (F.col("batch") == batch)).count())
        rec.counts["generated"] += written
        rec.counts["staged_batches"] += 1
        log.info("answer run %s: staged batch %d/%d (%d rows; %d/%d generated)", run_id, k + 1, n_batches,
                 written, rec.counts["generated"], n_pending)


def merge_staged_answers(tables: "Tables", cfg: RagConfig, run_id: str) -> dict[str, Any]:
    """MERGE the run's staged rows (the latest per question) into the answers table, then
    delete every staged row of the run. Idempotent: a rerun after a kill in between merges
    the same rows again."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    staged = _staged(tables, cfg, run_id, config_fingerprint(cfg))
    if staged is None:
        return {"merged": False}
    latest = Window.partitionBy("question_id").orderBy(F.col("batch").desc())
    rows = (staged.withColumn("_n", F.row_number().over(latest)).where(F.col("_n") == 1)
            .select(*[_conform(F.col(f.name), f.dataType).alias(f.name) for f in ANSWERS_SCHEMA.fields]))
    metrics = tables.merge(rows, cfg.names.answers, keys=["question_id", "run_id"], when_matched="update")
    tables.delete_where(cfg.names.answers_staging, f"run_id = {_quote(run_id)}")
    return metrics


def _conform(column: Any, dtype: Any) -> Any:
    """``column`` with ``dtype``'s nested non-null fields restored.

    Spark reads every table back with nullable fields, and a cast cannot make a field
    non-null; rebuilding each struct (non-null fields through a coalesce that never fires:
    they hold no nulls) gives the answers table its declared schema (history turns and
    contexts with non-null fields), as the rows had when they were generated.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, StringType, StructType

    if isinstance(dtype, ArrayType):
        return F.transform(column, lambda element: _conform(element, dtype.elementType))
    if isinstance(dtype, StructType):
        fields = []
        for f in dtype.fields:
            value = _conform(column[f.name], f.dataType)
            if not f.nullable:
                default = F.lit("") if isinstance(f.dataType, StringType) else F.lit(0).cast(f.dataType)
                value = F.coalesce(value, default)
            fields.append(value.alias(f.name))
        return F.struct(*fields)
    return column.cast(dtype)
