"""The ingest job: Delta documents -> chunks -> embeddings on executors -> Delta -> ChromaDB.

Incremental and idempotent. Each document gets a ``doc_hash`` of its content *and* of the
settings that shape its chunks and vectors (encoder, pooling, prefixes, chunk sizes), so
a rerun re-embeds exactly the documents whose content or settings changed:

1. plan: compare the input's ``(doc_id, doc_hash)`` pairs with the chunks table's;
2. embed the new/changed documents on the executors and append their chunks to Delta;
3. delete the stale pairs (changed, shrunk and vanished documents) from Delta;
4. bring Chroma in step with the chunks table by ``(chunk_id, doc_hash)``, shard by shard:
   each shard whose pairs changed is rebuilt by one Spark task (delete the ids the table no
   longer has, load the ones the shard lacks or holds with another hash), verified to hold
   exactly its share of the table's ids, and the rebuilt shards are published together by
   one atomic manifest switch (:mod:`sparkrag.index.sync`);
5. rebuild the lexical (BM25) index when the chunks table moved (:mod:`sparkrag.index.lexical`).

Every step is safe to repeat, so a run killed anywhere and rerun converges to the state
an uninterrupted run reaches. Rows that cannot be ingested go to the rejects table; a
rejected document keeps whatever chunks it had.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from sparkrag.config import RagConfig
from sparkrag.errors import SchemaError
from sparkrag.pipelines.preflight import check_outputs, job_lock
from sparkrag.pipelines.runs import RunRecorder, new_run_id, rejects_frame, write_run_record
from sparkrag.schemas import CHUNKS_SCHEMA, require_columns

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from sparkrag.delta import Tables

__all__ = ["run_ingest", "settings_fingerprint", "prepare_documents"]

log = logging.getLogger(__name__)

_SCALAR_TYPES = ("string", "int", "bigint", "smallint", "tinyint", "double", "float", "boolean", "date",
                 "timestamp", "timestamp_ntz", "decimal")


def settings_fingerprint(cfg: RagConfig) -> str:
    """Hash of every setting that changes a document's chunks or vectors."""
    enc, chunk = cfg.encoder, cfg.chunking
    shaping = [enc.model, enc.pooling, enc.normalize, enc.passage_prefix, enc.max_length,
               chunk.max_tokens, chunk.overlap_tokens]
    return hashlib.sha256(json.dumps(shaping).encode()).hexdigest()[:16]


def _check_input(df: "DataFrame", cfg: RagConfig, table: str) -> None:
    """Fail before any work when a configured column is missing or of an unusable type."""
    cols = cfg.documents
    wanted = {cols.id: "documents.id", cols.text: "documents.text"}
    if cols.title:
        wanted[cols.title] = "documents.title"
    wanted.update({c: "documents.metadata" for c in cols.metadata})
    types = dict(df.dtypes)
    require_columns(list(types), {c: f"option {opt}" for c, opt in wanted.items()}, where=f"documents table {table}")
    if types[cols.text] != "string":
        raise SchemaError(f"documents table {table}: column {cols.text!r} (documents.text) must be a string, "
                          f"got {types[cols.text]}")
    for col in [cols.id, *([cols.title] if cols.title else []), *cols.metadata]:
        if not types[col].startswith(_SCALAR_TYPES):
            raise SchemaError(f"documents table {table}: column {col!r} is {types[col]}; only scalar columns "
                              "can be ids, titles or Chroma metadata")


def prepare_documents(df: "DataFrame", cfg: RagConfig, *, table: str) -> tuple["DataFrame", "DataFrame"]:
    """Normalise the documents and split off bad rows.

    Returns:
        (valid, bad): ``valid`` has doc_id, text, title, metadata, doc_hash; ``bad`` has
        the input columns plus ``_reason`` and ``_column``.
    """
    return split_documents(check_documents(df, cfg, table=table), cfg)


def _normalised(cfg: RagConfig) -> dict[str, "Column"]:
    """doc_id, text, title and metadata of a documents row, as the job uses them."""
    from pyspark.sql import functions as F

    cols = cfg.documents
    meta_keys = sorted(cols.metadata)
    metadata = (F.map_from_arrays(F.array(*[F.lit(k) for k in meta_keys]),
                                  F.array(*[F.col(f"`{k}`").cast("string") for k in meta_keys]))
                if meta_keys else F.lit(None).cast("map<string,string>"))
    title = F.col(f"`{cols.title}`").cast("string") if cols.title else F.lit(None).cast("string")
    return {"doc_id": F.col(f"`{cols.id}`").cast("string"), "text": F.col(f"`{cols.text}`"), "title": title,
            "metadata": metadata}


def check_documents(df: "DataFrame", cfg: RagConfig, *, table: str) -> "DataFrame":
    """The input rows with ``_reason`` and ``_column`` (null for a valid row) and ``doc_hash`` (valid rows).

    One frame that both halves of :func:`split_documents` read: cache it and the documents
    are read, checked and hashed once. Finding repeated ids runs one Spark job over the ids.
    """
    from pyspark.sql import functions as F

    _check_input(df, cfg, table)
    cols = cfg.documents
    doc = _normalised(cfg)
    doc_id, text = doc["doc_id"], doc["text"]
    df = _with_duplicates(df, doc_id)
    dupes = F.coalesce(F.col("_dupes"), F.lit(1))
    # F.trim strips spaces only: "\n\t" would pass, chunk to nothing and look new on every run.
    blank = r"(?U)^\s*$"
    undecodable = _undecodable_columns(df, cfg)
    reason = F.when(F.lit(False), F.lit(None).cast("string"))
    for name, invalid in undecodable:  # first: Arrow cannot hand such a row to pandas (issue #17)
        reason = reason.when(invalid, F.lit(f"invalid UTF-8 in column {name!r}: bytes that are not text"))
    reason = (reason.when(doc_id.isNull() | doc_id.rlike(blank), F.lit("null or empty document id"))
              .when(text.isNull() | text.rlike(blank), F.lit("null or empty text"))
              .when(F.length(text) > cfg.ingest.max_document_chars,
                    F.concat(F.lit("document too large: "), F.length(text).cast("string"),
                             F.lit(f" chars > ingest.max_document_chars={cfg.ingest.max_document_chars}")))
              .when(dupes > 1, F.concat(F.lit("duplicate document id ("), dupes.cast("string"), F.lit(" rows)"))))
    column = F.when(F.lit(False), F.lit(None).cast("string"))
    for name, invalid in undecodable:
        column = column.when(invalid, F.lit(name))
    column = (column.when(doc_id.isNull() | doc_id.rlike(blank) | (dupes > 1), F.lit(cols.id))
              .otherwise(F.lit(cols.text)))
    checked = (df.withColumn("_reason", reason).withColumn("_column", F.when(F.col("_reason").isNotNull(), column))
               .drop("_dupes"))
    fingerprint = settings_fingerprint(cfg)
    doc_hash = F.sha2(F.concat_ws("\u0001", F.lit(fingerprint), F.to_json(
        F.struct(text.alias("text"), doc["title"].alias("title"), F.to_json(doc["metadata"]).alias("m")))), 256)
    return checked.withColumn("doc_hash", F.when(F.col("_reason").isNull(), doc_hash))


# Documents sharing an id are found by an aggregate of the ids alone and joined back by
# broadcast while there are at most this many such ids (else a window over all columns).
MAX_BROADCAST_DUPLICATES = 100_000


def _with_duplicates(df: "DataFrame", doc_id: "Column") -> "DataFrame":
    """``df`` with ``_dupes``: how many rows share the row's document id when more than one, else null.

    One job counts repeated ids over the id column only; a window would shuffle every row, text
    and all, to count them (issue #13: the plan of a 1%-change rerun reads every document).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    repeated = df.groupBy(doc_id.alias("_dup_id")).agg(F.count(F.lit(1)).alias("_dupes")).where("_dupes > 1")
    found = repeated.limit(MAX_BROADCAST_DUPLICATES + 1).collect()  # bounded: at most that many ids
    if len(found) <= MAX_BROADCAST_DUPLICATES:
        small = df.sparkSession.createDataFrame(found, "_dup_id string, _dupes long")
        return df.join(F.broadcast(small), doc_id == F.col("_dup_id"), "left").drop("_dup_id")
    return df.withColumn("_dupes", F.count(F.lit(1)).over(Window.partitionBy(doc_id)))


def split_documents(checked: "DataFrame", cfg: RagConfig) -> tuple["DataFrame", "DataFrame"]:
    """(valid, bad) rows of :func:`check_documents`' frame, as :func:`prepare_documents` returns them."""
    from pyspark.sql import functions as F

    doc = _normalised(cfg)
    bad = checked.where(F.col("_reason").isNotNull()).drop("doc_hash")
    # The rejects table gets the row with its bad bytes replaced by U+FFFD, so that it stays readable.
    bad = bad.withColumns({name: F.decode(F.encode(F.col(f"`{name}`"), "UTF-8"), "UTF-8")
                           for name, _ in _undecodable_columns(bad, cfg)})
    valid = checked.where(F.col("_reason").isNull()).select(*[c.alias(k) for k, c in doc.items()], "doc_hash")
    return valid, bad


def _undecodable_columns(df: "DataFrame", cfg: RagConfig) -> list[tuple[str, Any]]:
    """``(column, is-invalid expression)`` for each string column the job reads.

    A string holding bytes that are not UTF-8 (Delta's string type forbids them, some writers
    produce them) passes through Spark untouched but aborts the Arrow hand-over to pandas with
    an ``ArrowException`` naming neither row nor column. Spark's ``encode`` replaces
    malformed bytes (3.5 and 4.x alike), so a row is invalid exactly when re-encoding its
    value changes the raw bytes (``is_valid_utf8`` is Spark 4 only).
    """
    from pyspark.sql import functions as F

    cols = cfg.documents
    types = dict(df.dtypes)
    names = [cols.id, cols.text, *([cols.title] if cols.title else []), *cols.metadata]
    out = []
    for name in dict.fromkeys(names):
        if types.get(name) == "string":
            col = F.col(f"`{name}`")
            out.append((name, col.isNotNull() & (F.encode(col, "UTF-8") != col.cast("binary"))))
    return out


def run_ingest(spark: "SparkSession", cfg: RagConfig, *, run_id: str | None = None) -> dict[str, Any]:
    """Run the ingest job; returns the run record (counts, stage seconds, outputs).

    Raises:
        SchemaError: a configured column is missing or unusable (before any work).
        OutputError: tables.root, chroma.path or lexical.path cannot be written (before any work).
        LockError: another ingest of the same chunks table and index holds the lock for
            longer than tables.lock_wait_seconds (before any work).
        VectorStoreError: the collection belongs to another encoder, or Chroma does not
            hold exactly the chunks table's ids after the load.
    """
    from sparkrag.embed import encoder_info
    from sparkrag.delta import open_tables

    tables = open_tables(spark, cfg.tables)
    check_outputs(tables, cfg, "ingest")
    model_id, dim = encoder_info(cfg.encoder, "passage")
    rec = RunRecorder("ingest", cfg, run_id or new_run_id("ingest"), embedding_model=model_id)
    names = cfg.names
    rec.outputs = {"chunks": tables.location(names.chunks), "rejects": tables.location(names.rejects),
                   "runs": tables.location(names.runs),
                   "chroma": f"{cfg.chroma.mode}:{cfg.chroma.path if cfg.chroma.mode == 'embedded' else cfg.chroma.host}"
                             f"/{cfg.chroma.collection}",
                   **({"lexical": cfg.lexical.path} if cfg.lexical.enabled else {})}
    log.info("ingest run %s: %s -> %s + Chroma %s", rec.run_id, names.documents, names.chunks, rec.outputs["chroma"])
    try:
        # One ingest per chunks table and index at a time, taken before planning (issue #17).
        with job_lock(tables, cfg, "ingest", rec.run_id) as lock:
            rec.before_stage = lock.check  # a run that lost its lock commits nothing more
            _ingest(spark, tables, cfg, rec, model_id, dim)
    except BaseException as exc:
        write_run_record(tables, names.runs, rec.record("failed", f"{type(exc).__name__}: {exc}"[:4000]))
        raise
    record = rec.record("succeeded")
    write_run_record(tables, names.runs, record)
    return record


def _ingest(spark: "SparkSession", tables: "Tables", cfg: RagConfig, rec: RunRecorder, model_id: str, dim: int) -> None:
    from sparkrag.index import sync as chroma_sync
    names = cfg.names
    rec.input_versions[names.documents] = tables.version(names.documents)
    raw = tables.read(names.documents)
    _check_input(raw, cfg, names.documents)  # before any work
    chroma_sync.open_for_ingest(cfg, embedding_model=model_id, dim=dim, full_refresh=cfg.ingest.full_refresh)
    with rec.stage("plan"):
        # read, checked and hashed once: it feeds the plan, the rejects and the embeds
        checked = check_documents(raw, cfg, table=names.documents).cache()
        valid, bad = split_documents(checked, cfg)
        existing, rec.counts["duplicate_pairs_healed"], pairs = _existing_pairs(tables, cfg)
        plan = _plan(cfg, valid, bad, existing)
        rec.counts.update(plan["counts"])
    with rec.stage("rejects"):
        bad_rows = rejects_frame(bad, run_id=rec.run_id, job="ingest", source_table=names.documents,
                                 key_col=cfg.documents.id).cache()
        rec.counts["rejects"] = bad_rows.count()
        if rec.counts["rejects"]:
            tables.write(bad_rows, names.rejects, mode="append")
        bad_rows.unpersist()
    with rec.stage("chunk_embed_write", spark):
        todo = rec.counts["documents_new"] + rec.counts["documents_changed"]
        # Nothing to embed writes nothing (a no-op rerun leaves only its run record).
        rec.counts["chunks_embedded"] = (_embed_and_append(spark, tables, cfg, rec, plan["to_embed"], model_id, dim)
                                         if todo or (cfg.ingest.full_refresh and rec.counts["documents_valid"]) else 0)
    with rec.stage("delete_stale"):
        if plan["stale"] is not None and rec.counts["stale_pairs"]:
            out = tables.delete_keys(plan["stale"], names.chunks, keys=["doc_id", "doc_hash"])
            rec.counts["chunks_deleted"] = int(out.get("num_target_rows_deleted", 0))
    if tables.exists(names.chunks):
        rec.input_versions[names.chunks] = tables.version(names.chunks)
    chunks = tables.read(names.chunks) if tables.exists(names.chunks) else None
    # per-shard fingerprints and the diff against the bases: computed once for both indexes
    summaries = chroma_sync.ShardSummaries(chunks)
    try:
        _sync_indexes(spark, cfg, rec, chunks, summaries, model_id, dim)
    finally:
        summaries.release()
    for cached in (checked, pairs):
        cached.unpersist()
    rec.metrics["chunks_per_second"] = rec.counts["chunks_embedded"] / max(rec.stage_seconds["chunk_embed_write"], 1e-9)
    log.info("ingest run %s done: %s", rec.run_id, rec.counts)


def _sync_indexes(spark: "SparkSession", cfg: RagConfig, rec: RunRecorder, chunks: "DataFrame | None",
                  summaries: Any, model_id: str, dim: int) -> None:
    """Bring the Chroma index, then the BM25 index (sharded alike) in step with the chunks table."""
    from sparkrag.index import sync as chroma_sync

    with rec.stage("chroma_load"):
        sync = chroma_sync.sync_collection(chunks, cfg, embedding_model=model_id, dim=dim, spark=spark,
                                           summaries=summaries)
        rec.counts.update({f"chroma_{k}": v for k, v in sync.items()})
    if cfg.lexical.enabled:
        from sparkrag.index.lexical_shards import sync_lexical_index

        with rec.stage("lexical_index"):  # shard i of both indexes holds the same documents
            built = sync_lexical_index(chunks, cfg.lexical, chunks_version=rec.input_versions.get(cfg.names.chunks),
                                       shards=sync["shards"], full_refresh=cfg.ingest.full_refresh,
                                       compact_at=cfg.chroma.compact_at, spark=spark, summaries=summaries)
            rec.counts.update({f"lexical_{k}": v for k, v in built.items()})


def _existing_pairs(tables: "Tables", cfg: RagConfig) -> tuple["DataFrame", int, "DataFrame"]:
    """The chunks table's ``(doc_id, doc_hash)`` pairs after healing repeated chunks, the healed count, and the
    cached frame behind the pairs (unpersist it when done).

    Overlapping runs of an older sparkrag (or any writer outside the lock) leave a chunk
    twice. One delete commit removes those documents' chunks (atomic: no document is left
    half there), so the plan sees them missing and embeds them once more. A chunk id
    belongs to one document (it hashes the doc_id), so a pair holds a repeated chunk exactly
    when it has more rows than distinct chunk ids: one aggregate finds both.
    """
    from pyspark.sql import functions as F

    if cfg.ingest.full_refresh or not tables.exists(cfg.names.chunks):
        none = tables.spark.createDataFrame([], "doc_id string, doc_hash string")
        return none, 0, none
    chunks = tables.read(cfg.names.chunks)
    # The same chunk under the same doc_hash twice is a duplicate; one chunk id under two
    # hashes is a document mid-change (a run killed before its stale-pair delete), which the
    # plan's stale pairs resolve without re-embedding anything.
    pairs = (chunks.groupBy("doc_id", "doc_hash")  # collect_set: one aggregation, where countDistinct takes two
             .agg((F.count(F.lit(1)) > F.size(F.collect_set("chunk_id"))).alias("_repeated")).cache())
    repeated = pairs.where("_repeated").select("doc_id", "doc_hash")
    found = repeated.count()
    if found:
        out = tables.delete_keys(repeated, cfg.names.chunks, keys=["doc_id", "doc_hash"])
        log.warning("chunks table %s held repeated chunk ids (an earlier overlapping run): deleted the %s chunks "
                    "of %d document version(s), which this run embeds again", cfg.names.chunks,
                    out.get("num_target_rows_deleted", "?"), found)
    return pairs.where(~F.col("_repeated")).select("doc_id", "doc_hash"), found, pairs


def _plan(cfg: RagConfig, valid: "DataFrame", bad: "DataFrame", existing: "DataFrame") -> dict[str, Any]:
    """Which documents to embed and which (doc_id, doc_hash) pairs of the chunks table are stale."""
    from pyspark.sql import functions as F

    current = valid.select("doc_id", "doc_hash")
    to_embed = valid.join(existing, ["doc_id", "doc_hash"], "left_anti")
    rejected_ids = bad.select(F.col(f"`{cfg.documents.id}`").cast("string").alias("doc_id")).distinct()
    # A rejected document keeps its old chunks: bad input must not delete good data.
    stale = existing.join(current, ["doc_id", "doc_hash"], "left_anti").join(rejected_ids, "doc_id", "left_anti")
    counts = _plan_counts(current, existing, rejected_ids)
    counts["documents_read"] = counts["documents_valid"] + bad.count()
    log.info("ingest plan: %s", counts)
    return {"to_embed": to_embed, "stale": stale, "counts": counts}


def _plan_counts(current: "DataFrame", existing: "DataFrame", rejected_ids: "DataFrame") -> dict[str, int]:
    """The plan's document counts in one Spark job (a count per figure costs seconds each)."""
    from pyspark.sql import functions as F

    pairs = (current.withColumn("_cur", F.lit(True))
             .join(existing.withColumn("_old", F.lit(True)), ["doc_id", "doc_hash"], "full_outer")
             .join(rejected_ids.withColumn("_rej", F.lit(True)), "doc_id", "left"))
    cur, old, rej = (F.col(c).isNotNull() for c in ("_cur", "_old", "_rej"))
    per_doc = pairs.groupBy("doc_id").agg(
        F.max(cur).alias("has_cur"), F.max(cur & old).alias("same"), F.max(old).alias("had"),
        F.max(rej).alias("rej"), F.sum((old & ~cur & ~rej).cast("long")).alias("stale"))
    has_cur, same, had, rejected = (F.col(c) for c in ("has_cur", "same", "had", "rej"))
    def count_if(cond):  # F.count_if is Spark 3.5+; a sum of 0/1 works on every Spark
        return F.coalesce(F.sum(cond.cast("long")), F.lit(0))

    row = per_doc.agg(
        count_if(has_cur).alias("documents_valid"),
        count_if(has_cur & ~same & ~had).alias("documents_new"),
        count_if(has_cur & ~same & had).alias("documents_changed"),
        count_if(same).alias("documents_unchanged"),
        count_if(~has_cur & had & ~rejected).alias("documents_deleted"),
        F.coalesce(F.sum("stale"), F.lit(0)).alias("stale_pairs"),
    ).first()
    return {k: int(v) for k, v in row.asDict().items()}


def _embed_and_append(spark: "SparkSession", tables: "Tables", cfg: RagConfig, rec: RunRecorder,
                      to_embed: "DataFrame", model_id: str, dim: int) -> int:
    """Chunk and embed ``to_embed`` on the executors and append (or, on full refresh, overwrite)."""
    from pyspark.sql import functions as F

    from sparkrag.chunk import chunk_documents
    from sparkrag.embed import embed_dataframe

    parallelism = max(spark.sparkContext.defaultParallelism, 1)
    docs = to_embed.repartition(parallelism * 2, "doc_id")
    chunks = chunk_documents(docs, encoder=cfg.encoder, chunking=cfg.chunking)
    embedded = embed_dataframe(chunks, text_col="text", out_col="embedding", cfg=cfg.encoder, role="passage")
    out = embedded.select(
        *[F.col(f.name) for f in CHUNKS_SCHEMA.fields if f.name in embedded.columns],
        F.lit(model_id).alias("embedding_model"), F.lit(dim).alias("embedding_dim"),
        F.lit(rec.run_id).alias("run_id"), F.current_timestamp().alias("created_at"),
    ).select(*[F.col(f.name).cast(f.dataType) for f in CHUNKS_SCHEMA.fields])
    mode = "overwrite" if cfg.ingest.full_refresh else "append"
    before = tables.version(cfg.names.chunks)
    # txn: a retried write of this run's chunks commits once.
    tables.write(out, cfg.names.chunks, mode=mode, txn=(f"sparkrag-ingest-{rec.run_id}", 0),
                 overwrite_schema=cfg.ingest.full_refresh)
    if tables.version(cfg.names.chunks) == before:
        return 0
    return tables.read(cfg.names.chunks).where(F.col("run_id") == rec.run_id).count()
