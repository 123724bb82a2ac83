"""Column names and Spark schemas of every table sparkrag writes.

One module so that jobs, SQL files and tests agree on names. Every written row carries
lineage: ``run_id``, a model id column and ``created_at``.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from sparkrag.errors import SchemaError

__all__ = [
    "CHUNKS_SCHEMA",
    "REJECTS_SCHEMA",
    "RUNS_SCHEMA",
    "ANSWERS_SCHEMA",
    "STAGED_ANSWERS_SCHEMA",
    "CONTEXT_STRUCT",
    "TURN_STRUCT",
    "require_columns",
    "check_schema",
]

STR_MAP = MapType(StringType(), StringType())


def _schema(*fields: tuple[str, DataType, bool]) -> StructType:
    return StructType([StructField(name, dtype, nullable) for name, dtype, nullable in fields])


CHUNKS_SCHEMA = _schema(
    ("chunk_id", StringType(), False),  # sha256(doc_id, chunk_index, content_hash)[:32]
    ("doc_id", StringType(), False),
    ("chunk_index", IntegerType(), False),
    ("text", StringType(), False),
    ("title", StringType(), True),
    ("metadata", STR_MAP, True),  # user-named document columns, as strings
    ("content_hash", StringType(), False),  # of the chunk text
    ("doc_hash", StringType(), False),  # of the whole document (text, title, metadata): change detection
    ("token_count", IntegerType(), False),  # in the encoder's tokenizer, special tokens included
    ("char_start", IntegerType(), False),
    ("char_end", IntegerType(), False),
    ("embedding", ArrayType(FloatType(), False), False),
    ("embedding_model", StringType(), False),
    ("embedding_dim", IntegerType(), False),
    ("run_id", StringType(), False),
    ("created_at", TimestampType(), False),
)

REJECTS_SCHEMA = _schema(
    ("run_id", StringType(), False),
    ("job", StringType(), False),
    ("source_table", StringType(), True),
    ("row_key", StringType(), True),  # document or question id when there is one
    ("column", StringType(), True),
    ("reason", StringType(), False),
    ("row_json", StringType(), True),  # the offending row, truncated
    ("created_at", TimestampType(), False),
)

RUNS_SCHEMA = _schema(
    ("run_id", StringType(), False),
    ("job", StringType(), False),  # ingest | answer | evaluate
    ("status", StringType(), False),  # succeeded | failed
    ("started_at", TimestampType(), False),
    ("finished_at", TimestampType(), False),
    ("counts", MapType(StringType(), LongType()), True),
    ("stage_seconds", MapType(StringType(), DoubleType()), True),
    ("metrics", MapType(StringType(), DoubleType()), True),  # rates, abstention rate...
    ("input_versions", MapType(StringType(), LongType()), True),
    ("outputs", STR_MAP, True),  # table/collection name -> location
    ("config_json", StringType(), True),
    ("model_id", StringType(), True),
    ("embedding_model", StringType(), True),
    ("sparkrag_version", StringType(), False),
    ("error", StringType(), True),
    ("created_at", TimestampType(), False),
)

CONTEXT_STRUCT = StructType(
    [
        StructField("chunk_id", StringType(), False),
        StructField("doc_id", StringType(), False),
        StructField("title", StringType(), True),
        StructField("text", StringType(), False),
        StructField("distance", DoubleType(), True),
        StructField("rank", IntegerType(), False),  # 1-based, after post-query filtering
        StructField("metadata", STR_MAP, True),
        # which retrievers (dense, lexical) returned it, at what 1-based rank, before post-filters
        StructField("retrievers", MapType(StringType(), IntegerType()), True),
        StructField("fusion_score", DoubleType(), True),  # hybrid: the fused score that ordered it
    ]
)

TURN_STRUCT = StructType([StructField("role", StringType(), False), StructField("content", StringType(), False)])

ANSWERS_SCHEMA = _schema(
    ("question_id", StringType(), False),
    ("question", StringType(), True),
    ("history", ArrayType(TURN_STRUCT, False), True),
    ("answer", StringType(), True),
    ("abstained", BooleanType(), True),
    ("contexts", ArrayType(CONTEXT_STRUCT, False), True),
    ("filters_json", StringType(), True),  # the pre/in/post-query filters applied to this row
    ("prompt", StringType(), True),  # the exact prompt, when answer.keep_prompt
    ("model_id", StringType(), False),
    ("embedding_model", StringType(), False),
    ("collection", StringType(), False),
    ("retrieval_mode", StringType(), False),
    ("prompt_tokens", IntegerType(), True),
    ("completion_tokens", IntegerType(), True),
    ("latency_ms", DoubleType(), True),
    ("error", StringType(), True),
    ("run_id", StringType(), False),
    ("created_at", TimestampType(), False),
)

# Answers committed batch by batch while a run is in progress (sparkrag.pipelines.answer_staging).
STAGED_ANSWERS_SCHEMA = StructType(ANSWERS_SCHEMA.fields + [
    StructField("batch", IntegerType(), False),  # the staged commit's txnVersion within the run
    StructField("config_fingerprint", StringType(), False),  # settings the row was generated under
])


def require_columns(columns: list[str] | StructType, required: dict[str, str], *, where: str) -> None:
    """Fail before any Spark action when ``required`` columns are missing.

    Args:
        columns: the DataFrame's columns or schema.
        required: column name -> why it is needed (or the option naming it).
        where: the table or stage being checked, for the message.

    Raises:
        SchemaError: listing every missing column with the option that names it.
    """
    names = set(columns.fieldNames() if isinstance(columns, StructType) else columns)
    missing = [f"{col!r} ({why})" for col, why in required.items() if col not in names]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {', '.join(missing)}; found {sorted(names)}")


def _denull(value: Any) -> Any:
    """A type's JSON with every nullability flag set, so types compare by shape alone."""
    if isinstance(value, dict):
        flags = ("nullable", "containsNull", "valueContainsNull")
        return {k: (True if k in flags else _denull(v)) for k, v in value.items() if k != "metadata"}
    if isinstance(value, list):
        return [_denull(v) for v in value]
    return value


def check_schema(table_schema: StructType, data_schema: StructType, *, table: str) -> None:
    """Refuse data whose columns or types differ from the table's (nullability aside).

    delta-rs's transaction API validates nothing (a wrong type reads back as null and an
    extra column vanishes), and the native connector's own errors name no column, so every
    write and merge is checked here first, on both backends.

    Raises:
        SchemaError: naming each column that is missing, extra or of another type.
    """
    table_fields = {f.name: f for f in table_schema.fields}
    data_fields = {f.name: f for f in data_schema.fields}
    problems = []
    for name, f in data_fields.items():
        if name not in table_fields:
            problems.append(f"column {name!r} is not in the table")
        elif _denull(f.dataType.jsonValue()) != _denull(table_fields[name].dataType.jsonValue()):
            problems.append(
                f"column {name!r}: table has {table_fields[name].dataType.simpleString()}, "
                f"data has {f.dataType.simpleString()}")
    for name in table_fields:
        if name not in data_fields:
            problems.append(f"column {name!r} is missing from the data")
    if problems:
        raise SchemaError(f"refusing to write to {table}: " + "; ".join(problems))
