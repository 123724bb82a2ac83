"""How the answer job's retrieval reaches the index: replicated, or partitioned across shards (issue #13).

* **replicated**: every Python worker opens every shard (Chroma and BM25) and answers its
  questions alone (:func:`sparkrag.pipelines.answer_stages.make_retrieve_stage`). Best for
  small indexes: no shuffle.
* **partitioned**: the questions are embedded once, paired with every shard id, grouped by
  shard (and a bucket of questions), and each group's task opens that one shard, searches
  it for its questions (:func:`sparkrag.retrieval.partitioned.search_shard`) and emits
  candidate rows; the rows are gathered per question and merged, fused and post-filtered
  (:func:`~sparkrag.retrieval.partitioned.merge_shards`). A worker holds only the shards
  its tasks touched.
* ``vector_search: exact`` is always partitioned: each shard's chunks come from the chunks
  table (a cogroup with the questions), brute-forced where they are. Nothing is broadcast.

``retrieval.shard_access: auto`` picks partitioned when the index (Chroma and BM25 shard
folders on disk) exceeds a quarter of an executor's memory, and logs the figures.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sparkrag.config import RagConfig
from sparkrag.errors import VectorStoreError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from sparkrag.delta import Tables
    from sparkrag.pipelines.runs import RunRecorder

__all__ = ["plan_retrieval", "choose_access", "memory_bytes", "Retrieval"]

log = logging.getLogger(__name__)

_BUCKET_QUESTIONS = 1000  # questions per (shard, bucket) group: bounds a group's candidate frame
_REPLICATED_SHARE = 0.25  # auto: replicated while the index fits in this share of an executor's memory


def memory_bytes(text: str) -> int:
    """``"4g"``, ``"512m"``, ``"1024k"``, ``"2t"`` or bytes, as Spark reads memory settings."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    value = str(text).strip().lower().removesuffix("b")
    return int(float(value[:-1]) * units[value[-1]]) if value and value[-1] in units else int(value)


def _folder_bytes(paths: list[str]) -> int:
    total = 0
    for path in paths:
        for folder, _, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total


def choose_access(spark: "SparkSession", wanted: str, shards: int, index_bytes: int) -> tuple[str, str]:
    """``(replicated|partitioned, why)`` for ``retrieval.shard_access`` = ``wanted``."""
    from sparkrag.spark import is_local_master

    if wanted != "auto":
        return wanted, f"retrieval.shard_access={wanted}"
    conf = spark.sparkContext.getConf()
    key = "spark.driver.memory" if is_local_master(spark.sparkContext.master) else "spark.executor.memory"
    memory = memory_bytes(conf.get(key, "1g"))
    budget = int(memory * _REPLICATED_SHARE)
    if shards > 1 and index_bytes > budget:
        return "partitioned", (f"auto: the index ({index_bytes / 2**20:.0f} MiB in {shards} shards) exceeds "
                               f"{_REPLICATED_SHARE:.0%} of {key}={memory / 2**20:.0f} MiB")
    return "replicated", (f"auto: the index ({index_bytes / 2**20:.1f} MiB in {shards} shard(s)) fits in "
                          f"{_REPLICATED_SHARE:.0%} of {key}={memory / 2**20:.0f} MiB")


def plan_retrieval(spark: "SparkSession", tables: "Tables", cfg: RagConfig, rec: "RunRecorder", dim: int, *,
                   title_weight: float | None = None) -> "Retrieval":
    """On the driver: resolve and check the indexes once; ``questions -> stage-1 rows`` (contexts, filters).

    ``title_weight`` overrides the lexical index's title field weight (the mode comparison's variants).
    """
    from sparkrag.index.shards import make_index_fn, prepare_shard_refs
    from sparkrag.pipelines.answer_stages import make_retrieve_stage, stage1_schema
    from sparkrag.retrieval.search import check_retrieval_config

    check_retrieval_config(cfg.retrieval)
    r = cfg.retrieval
    lexical = _lexical_refs(spark, tables, cfg, rec) if r.mode != "dense" else None
    if lexical is not None and title_weight is not None:
        lexical = dataclasses.replace(lexical, title_weight=title_weight)
    parallelism = max(spark.sparkContext.defaultParallelism, 1)
    if r.vector_search == "exact":
        shards = len(lexical.dirs) if lexical is not None else _exact_shards(tables, cfg, parallelism)
        rec.outputs["shard_access"] = "partitioned (exact search)"
        log.info("retrieval: exact search, partitioned over %d shard(s) of %s (no broadcast)", shards,
                 cfg.names.chunks)
        return _partitioned(spark, tables, cfg, rec, shards, None, lexical, dim)
    refs = prepare_shard_refs(spark, cfg.chroma, embedding_model=cfg.encoder.model, dim=dim,
                              access=cfg.answer.chroma_access)
    if lexical is not None and len(lexical.dirs) != len(refs):
        raise VectorStoreError(f"the lexical index ({cfg.lexical.path}) has {len(lexical.dirs)} shard(s), the vector "
                               f"index {len(refs)}: rerun the ingest job")
    on_disk = [p for ref in refs for p in (ref.path, ref.delta) if p]
    on_disk += lexical.on_disk() if lexical and not lexical.archive else []
    access, why = choose_access(spark, r.shard_access, len(refs), _folder_bytes(on_disk))
    rec.outputs["shard_access"] = f"{access} ({why})"
    log.info("retrieval: %s access to %d shard(s) (%s)", access, len(refs), why)
    if access == "replicated":
        retrieve = make_retrieve_stage(cfg, make_index_fn(cfg.chroma, refs, embedding_model=cfg.encoder.model,
                                                          dim=dim), lexical)
        return Retrieval(lambda questions: questions.repartition(parallelism).mapInPandas(retrieve, stage1_schema()))
    return _partitioned(spark, tables, cfg, rec, len(refs), refs, lexical, dim)


def _exact_shards(tables: "Tables", cfg: RagConfig, parallelism: int) -> int:
    from sparkrag.index.layout import default_shard_count

    count = tables.read(cfg.names.chunks).count() if tables.exists(cfg.names.chunks) else 0
    return default_shard_count(count, parallelism)


def _lexical_refs(spark: "SparkSession", tables: "Tables", cfg: RagConfig, rec: "RunRecorder") -> Any:
    """The published BM25 index's :class:`~sparkrag.index.lexical_shards.LexicalRefs`; fails when there is none."""
    from sparkrag.index.lexical_shards import resolve_lexical, ship_lexical
    from sparkrag.spark import ships_copies

    refs, manifest = resolve_lexical(cfg.lexical.path)  # resolved once: every task reads this version
    rec.outputs["lexical_index"] = f"{cfg.lexical.path} (generation {manifest.generation})"
    if tables.exists(cfg.names.chunks) and manifest.chunks_version != tables.version(cfg.names.chunks):
        log.warning("lexical index %s was built from chunks table version %s, the table is at %s: "
                    "rerun the ingest job", cfg.lexical.path, manifest.chunks_version, tables.version(cfg.names.chunks))
    return ship_lexical(spark, refs) if ships_copies(spark, cfg.answer.chroma_access) else refs


# ---- partitioned: embed, scatter to shards, gather per question ----

def _partitioned(spark: "SparkSession", tables: "Tables", cfg: RagConfig, rec: "RunRecorder", shards: int,
                 dense: tuple[Any, ...] | None, lexical: Any, dim: int) -> "Retrieval":
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, StringType, StructField, StructType

    from sparkrag.index.layout import shard_column
    from sparkrag.pipelines.answer_stages import stage1_schema
    from sparkrag.retrieval.partitioned import CANDIDATE_COLUMNS, CANDIDATE_SCHEMA

    parallelism = max(spark.sparkContext.defaultParallelism, 1)
    buckets = max(1, math.ceil(rec.counts.get("questions", 0) / _BUCKET_QUESTIONS))
    if dense is not None:
        buckets = max(buckets, parallelism // shards)  # enough groups to keep every core busy
    embed = _embed_stage(cfg)
    gather = _gather_stage(cfg, shards)
    cached: list["DataFrame"] = []

    def produce(questions: "DataFrame") -> "DataFrame":
        fields = questions.schema.fields + [StructField("query_text", StringType()),
                                            StructField("query_vec", ArrayType(FloatType())),
                                            StructField("error", StringType()), StructField("retrieval_ms", DoubleType())]
        # Read twice (scattered to the shards, and joined with what they found): embedded once.
        embedded = questions.repartition(parallelism).mapInPandas(embed, StructType(fields)).cache()
        cached.append(embedded)
        pairs = (embedded.where(F.col("error").isNull())
                 .withColumn("_bucket", F.abs(F.hash("question_id")) % F.lit(buckets))
                 .crossJoin(F.broadcast(spark.range(shards).select(F.col("id").cast("int").alias("_shard")))))
        if dense is not None:
            search = _shard_stage(cfg, dense, lexical, dim)
            found = pairs.groupBy("_shard", "_bucket").applyInPandas(lambda pdf: search(pdf, None), CANDIDATE_SCHEMA)
        else:
            from sparkrag.index.sync import chroma_rows

            chunks = (chroma_rows(tables.read(cfg.names.chunks)).withColumn("_shard", shard_column("doc_id", shards))
                      .withColumn("_bucket", F.explode(F.sequence(F.lit(0), F.lit(buckets - 1)))))
            search = _shard_stage(cfg, None, lexical, dim)
            found = (pairs.groupBy("_shard", "_bucket").cogroup(chunks.groupBy("_shard", "_bucket"))
                     .applyInPandas(search, CANDIDATE_SCHEMA))
        gathered = found.groupBy("question_id").agg(
            F.collect_list(F.struct(*[F.col(c) for c in CANDIDATE_COLUMNS])).alias("_cands"))
        # A shuffle join: a broadcast would collect the questions' vectors or candidates on the driver.
        joined = embedded.hint("merge").join(gathered.hint("merge"), "question_id", "left")
        return joined.mapInPandas(gather, stage1_schema())

    return Retrieval(produce, cached)


class Retrieval:
    """``questions -> stage-1 rows``; :meth:`close` releases what the stage cached (after the run's writes)."""

    def __init__(self, produce: Callable[["DataFrame"], "DataFrame"], cached: list["DataFrame"] | None = None) -> None:
        self._produce, self._cached = produce, cached if cached is not None else []

    def __call__(self, questions: "DataFrame") -> "DataFrame":
        return self._produce(questions)

    def close(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()


def _embed_stage(cfg: RagConfig) -> Callable[[Iterator["pd.DataFrame"]], Iterator["pd.DataFrame"]]:
    """mapInPandas: each question's query text and vector (an empty question or a bad filter: its error)."""
    from sparkrag.embed import make_encode_fn
    from sparkrag.pipelines.answer_stages import filter_row, query_text
    from sparkrag.retrieval.filters import build_where, build_where_document

    encode_fn = make_encode_fn(cfg.encoder, role="query")
    step = max(cfg.retrieval.query_batch_size, 1)

    def embed(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        encode = encode_fn()
        for pdf in batches:
            for lo in range(0, len(pdf), step):
                start = time.perf_counter()
                part = pdf.iloc[lo:lo + step].copy()
                errors, texts = [], []
                for row in part.to_dict("records"):
                    error = None if isinstance(row["question"], str) and row["question"].strip() else "empty question"
                    if error is None:
                        try:
                            build_where(cfg.retrieval, filter_row(row))
                            build_where_document(cfg.retrieval, filter_row(row))
                        except Exception as exc:
                            error = f"{type(exc).__name__}: {exc}"[:2000]
                    errors.append(error)
                    texts.append(query_text(row["question"], row.get("history")) if error is None else None)
                live = [i for i, e in enumerate(errors) if e is None]
                vectors: list[Any] = [None] * len(part)
                if live:
                    for i, v in zip(live, encode([texts[i] for i in live])):
                        vectors[i] = v
                part["query_text"], part["query_vec"], part["error"] = texts, vectors, errors
                part["retrieval_ms"] = (time.perf_counter() - start) * 1000 / max(len(part), 1)
                yield part

    return embed


def _shard_stage(cfg: RagConfig, dense: tuple[Any, ...] | None, lexical: Any,
                 dim: int) -> Callable[["pd.DataFrame", "pd.DataFrame | None"], "pd.DataFrame"]:
    """applyInPandas/cogroup: one shard's candidate rows for a group of questions (and, exact, its chunks).

    ``dense``: the Chroma shards' refs (None: exact search over the cogrouped chunks). A worker
    holds one Chroma and one BM25 shard at a time.
    """
    import numpy as np

    from sparkrag.pipelines.answer_stages import filter_row
    from sparkrag.retrieval.filters import build_where, build_where_document
    from sparkrag.retrieval.partitioned import CANDIDATE_COLUMNS, marker, search_shard

    r, space, step = cfg.retrieval, cfg.chroma.space, max(cfg.retrieval.query_batch_size, 1)

    def search(questions: "pd.DataFrame", chunks: "pd.DataFrame | None") -> "pd.DataFrame":
        import pandas as pd

        if not len(questions):
            return pd.DataFrame([], columns=CANDIDATE_COLUMNS)
        shard = int(questions["_shard"].iloc[0])
        rows = questions.to_dict("records")
        out: list[dict[str, Any]] = []
        try:
            if dense is not None:
                from sparkrag.index.shards import open_shard_alone

                index = open_shard_alone(cfg.chroma, dense[shard], embedding_model=cfg.encoder.model, dim=dim)
            elif len(chunks):
                from sparkrag.index.exact import ExactIndex

                index = ExactIndex.from_chunks(chunks, space)
            else:  # a shard without chunks: nothing to find, in the queries' dimension
                from sparkrag.index.exact import ExactIndex

                index = ExactIndex([], np.zeros((0, dim), np.float32), [], [], space)
            shard_lexical = lexical.open_shard_alone(shard) if lexical is not None else None
        except Exception as exc:
            return pd.DataFrame([marker(row["question_id"], shard, f"{type(exc).__name__}: {exc}"[:2000])
                                 for row in rows], columns=CANDIDATE_COLUMNS)

        def run(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            start = time.perf_counter()
            found = search_shard(shard, [b["question_id"] for b in batch],
                                 [build_where(r, filter_row(b)) for b in batch],
                                 [build_where_document(r, filter_row(b)) for b in batch],
                                 np.stack([np.asarray(b["query_vec"], dtype=np.float32) for b in batch]),
                                 [b["query_text"] for b in batch], cfg=r, index=index, lexical=shard_lexical,
                                 space=space)
            ms = (time.perf_counter() - start) * 1000 / len(batch)
            return found + [marker(b["question_id"], shard, ms=ms) for b in batch]

        for lo in range(0, len(rows), step):
            batch = rows[lo:lo + step]
            try:
                out += run(batch)
            except Exception:  # one bad row fails alone
                for row in batch:
                    try:
                        out += run([row])
                    except Exception as exc:
                        out.append(marker(row["question_id"], shard, f"{type(exc).__name__}: {exc}"[:2000]))
        return pd.DataFrame(out, columns=CANDIDATE_COLUMNS)

    return search


def _gather_stage(cfg: RagConfig, shards: int) -> Callable[[Iterator["pd.DataFrame"]], Iterator["pd.DataFrame"]]:
    """mapInPandas: per question, every shard's candidates merged, fused and post-filtered (stage-1 rows)."""
    from sparkrag.pipelines.answer_stages import base_row, filter_row, get_field, seq, stage1_schema
    from sparkrag.retrieval.filters import build_where, build_where_document
    from sparkrag.retrieval.partitioned import CANDIDATE_COLUMNS, merge_shards
    from sparkrag.retrieval.rerank import make_rerank_fn
    from sparkrag.retrieval.search import finish_contexts, fuse_lists

    r = cfg.retrieval
    rerank_factory = make_rerank_fn(r.rerank_model) if r.rerank_model else None
    columns = stage1_schema().fieldNames()
    step = max(r.query_batch_size, 1)

    def finish(rows: list[dict[str, Any]], rerank: Any) -> list[dict[str, Any]]:
        start = time.perf_counter()
        out = [base_row(row) for row in rows]
        live = []
        for i, row in enumerate(rows):
            cands = [{c: get_field(x, c) for c in CANDIDATE_COLUMNS} for x in seq(row["_cands"])]
            failed = [c["error"] for c in cands if c["kind"] == "error"]
            done = {c["_shard"] for c in cands if c["kind"] == "done"}
            out[i]["retrieval_ms"] = (row["retrieval_ms"] or 0.0) + sum(c["score"] or 0.0 for c in cands
                                                                        if c["kind"] == "done")
            if row["error"] is not None or failed:
                out[i]["error"] = row["error"] or failed[0]
            elif len(done) < shards:
                out[i]["error"] = (f"VectorStoreError: shard(s) {sorted(set(range(shards)) - done)} returned no "
                                   "result for this question")
            else:
                live.append((i, merge_shards(cands, row["query_vec"], cfg=r, space=cfg.chroma.space)))
        if live:
            names = list(live[0][1][0])
            lists = {n: [m[0][n] for _, m in live] for n in names}
            relevance = {n: [m[1][n] for _, m in live] for n in names}
            fused = fuse_lists(lists, relevance, len(live), r)
            wheres = [build_where(r, filter_row(rows[i])) for i, _ in live]
            docs = [build_where_document(r, filter_row(rows[i])) for i, _ in live]
            contexts, filters = finish_contexts(fused, wheres, docs, cfg=r, queries=[rows[i]["question"] for i, _ in live],
                                                rerank_fn=rerank)
            for (i, _), ctxs, fjson in zip(live, contexts, filters):
                out[i].update(contexts=ctxs, filters_json=fjson)
        per_row = (time.perf_counter() - start) * 1000 / max(len(rows), 1)
        for row in out:
            row["retrieval_ms"] = (row["retrieval_ms"] or 0.0) + per_row
        return out

    def gather(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        import pandas as pd

        rerank = rerank_factory() if rerank_factory else None
        for pdf in batches:
            records = pdf.to_dict("records")
            for lo in range(0, len(records), step):
                batch = records[lo:lo + step]
                try:
                    rows = finish(batch, rerank)
                except Exception:  # e.g. the re-ranker failing on one row: that row only
                    rows = []
                    for row in batch:
                        try:
                            rows += finish([row], rerank)
                        except Exception as exc:
                            rows.append({**base_row(row), "error": f"{type(exc).__name__}: {exc}"[:2000]})
                yield pd.DataFrame(rows, columns=columns)

    return gather
