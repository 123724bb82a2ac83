"""Spark jobs over the chunks table, shard by shard: summaries, changes against bases, one task per shard.

The Chroma and BM25 syncs (:mod:`sparkrag.index.sync`, :mod:`sparkrag.index.lexical_shards`)
decide what to rebuild from per-shard summaries (:func:`shard_summaries`), send each changed
shard's rows to exactly one Spark task (:func:`run_per_shard`) and, when every task's base
records its pairs, send only the changes (:func:`_diff_rows`). The driver receives one row per
shard, whatever the corpus size (issue #13).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from sparkrag.index.layout import partition_keys, shard_column, shard_fingerprint
from sparkrag.index.vectorstore import DOC_HASH_KEY

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["chroma_rows", "shard_summaries", "ShardSummaries", "run_per_shard", "run_shard_tasks",
           "MAX_BROADCAST_CHANGES"]


def chroma_rows(chunks: "DataFrame") -> "DataFrame":
    """Chunk rows as every index stores them: doc_hash folded into the metadata (Chroma, exact, BM25)."""
    from pyspark.sql import functions as F

    meta = F.map_concat(F.coalesce(F.col("metadata"), F.create_map().cast("map<string,string>")),
                        F.create_map(F.lit(DOC_HASH_KEY), F.col("doc_hash")))
    extra = [c for c in ("doc_hash", "_shard") if c in chunks.columns]
    return chunks.select("chunk_id", "embedding", "text", "doc_id", "chunk_index", "title", meta.alias("metadata"),
                         *extra)


def shard_summaries(keyed: "DataFrame | None", n: int) -> tuple[list[str], list[int]]:
    """Per shard: the fingerprint and count of the table's (chunk_id, doc_hash) pairs.

    A Spark aggregate: each shard's pairs are hashed where the shard's rows are, and the
    driver receives ``n`` rows, whatever the corpus size (issue #13). The digest is
    :func:`~sparkrag.index.layout.shard_fingerprint`'s: the sha256 of the lines
    ``chunk_id\tdoc_hash\n`` sorted by chunk_id ('\t' sorts before every character of an
    id, so sorting whole lines sorts by id; a null hash is written ``None``, as Python does).
    """
    from pyspark.sql import functions as F

    fingerprints, counts = [shard_fingerprint({})] * n, [0] * n
    if keyed is None:
        return fingerprints, counts
    line = F.concat(F.col("chunk_id"), F.lit("\t"), F.coalesce(F.col("doc_hash"), F.lit("None")), F.lit("\n"))
    pairs = keyed.select("_shard", "chunk_id", "doc_hash").dropDuplicates()  # a repeated pair counts once
    per_shard = (pairs.select(F.col("_shard"), line.alias("line")).groupBy("_shard")
                 .agg(F.sha2(F.concat_ws("", F.sort_array(F.collect_list("line"))), 256).alias("fingerprint"),
                      F.count(F.lit(1)).alias("n")))
    for row in per_shard.collect():  # one row per shard
        fingerprints[row["_shard"]], counts[row["_shard"]] = row["fingerprint"], int(row["n"])
    return fingerprints, counts


class ShardSummaries:
    """:func:`shard_summaries` of one chunks table, once per shard count, and its changes against bases.

    The ingest's Chroma and BM25 syncs share one: a single Spark aggregate per ingest, and a
    single diff (:meth:`diff`) when the two indexes' bases hold the same pairs. Call
    :meth:`release` when done (it drops the cached diffs).
    """

    def __init__(self, chunks: "DataFrame | None") -> None:
        self.chunks = chunks
        self._by_count: dict[int, tuple[list[str], list[int]]] = {}
        self._diffs: dict[tuple[Any, ...], "tuple[DataFrame, int] | None"] = {}
        self._cached: list["DataFrame"] = []

    def keyed(self, n: int) -> "DataFrame | None":
        """The chunks with ``_shard`` for ``n`` shards."""
        return self.chunks.withColumn("_shard", shard_column("doc_id", n)) if self.chunks is not None else None

    def __call__(self, n: int) -> tuple[list[str], list[int]]:
        if n not in self._by_count:
            self._by_count[n] = shard_summaries(self.keyed(n), n)
        return self._by_count[n]

    def diff(self, n: int, tasks: Sequence[Any]) -> "tuple[DataFrame, int] | None":
        """:func:`_diff_rows` of the table (``n`` shards) against ``tasks``' bases, cached: tasks of another index
        whose bases hold the same pairs (``PAIRS_DIGEST``) get the same rows without a second join or scan."""
        key = _bases_key(n, tasks)
        if key is not None and key in self._diffs:
            return self._diffs[key]
        found = _diff_rows(self.keyed(n), tasks) if self.chunks is not None and tasks else None
        if found is not None:
            rows, n_changed, diff = found
            self._cached += [diff, rows.cache()]
            found = rows, n_changed
        if key is not None:
            self._diffs[key] = found
        return found

    def release(self) -> None:
        for frame in self._cached:
            frame.unpersist()
        self._cached.clear()
        self._diffs.clear()


def _bases_key(n: int, tasks: Sequence[Any]) -> tuple[Any, ...] | None:
    """What a diff depends on: the shard count and each task's base pairs (their digests); None when unknown."""
    from sparkrag.index.build import PAIRS_DIGEST

    key: list[Any] = [n]
    for t in sorted(tasks, key=lambda t: t.shard):
        path = os.path.join(t.root or "", t.base or "", PAIRS_DIGEST)
        if not (t.root and t.base and t.compact_at > 0 and os.path.isfile(path)):
            return None
        with open(path, encoding="utf-8") as fh:
            key.append((t.shard, fh.read().strip()))
    return tuple(key)


def run_per_shard(spark: "SparkSession", rows: "DataFrame | None", shards: list[int],
                  build: Callable[[int, Iterator["pd.DataFrame"]], dict[str, Any]], schema: str) -> list[dict[str, Any]]:
    """``build(shard, batches)`` once per shard of ``shards``, each in its own Spark task with exactly its rows.

    ``rows`` carry ``_shard``. The driver receives one result row per shard. A shard whose
    rows all vanished may get no task (empty shuffle partitions): it is built on the driver
    from no rows.
    """
    from pyspark.sql import functions as F

    if not shards:
        return []
    keys = partition_keys(len(shards))
    results: list[dict[str, Any]] = []
    if rows is not None:
        to_key = F.create_map(*[F.lit(x) for s, k in zip(shards, keys) for x in (s, k)])
        keyed = (rows.where(F.col("_shard").isin(shards))
                 .withColumn("_pkey", to_key[F.col("_shard")].cast("long")))  # typed as the keys were hashed

        def task(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
            import pandas as pd
            from pyspark import TaskContext

            shard = shards[TaskContext.get().partitionId()]
            yield pd.DataFrame([build(shard, (b.drop(columns=["_pkey"]) for b in batches))])

        results = [r.asDict() for r in keyed.repartition(len(shards), "_pkey").mapInPandas(task, schema).collect()]
    done = {r["shard"] for r in results}
    results += [build(s, iter(())) for s in shards if s not in done]
    return sorted(results, key=lambda r: r["shard"])


def run_shard_tasks(spark: "SparkSession", summaries: ShardSummaries, n: int, tasks: list[Any],
                    build: Callable[[Any, Iterator["pd.DataFrame"]], dict[str, Any]], schema: str,
                    columns: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """``build(task, batches)`` per :class:`~sparkrag.index.build.ShardTask`, over :func:`chroma_rows` of the
    table (``n`` shards; ``columns`` of them); only the changes travel when every task may write a delta
    (:meth:`ShardSummaries.diff`; the tasks then get ``diff``).

    Returns:
        The tasks' results, and how many rows travelled whole when only the changes did (None: every row did).
    """
    keyed = summaries.keyed(n)
    rows, whole = (chroma_rows(keyed), None) if keyed is not None else (None, None)
    found = summaries.diff(n, tasks)
    if found is not None:
        rows, whole = found
        tasks = [dataclasses.replace(t, diff=True) for t in tasks]
    if rows is not None and columns:
        rows = rows.select(*columns, *[c for c in ("_masked",) if c in rows.columns])
    by_shard = {t.shard: t for t in tasks}
    return run_per_shard(spark, rows, list(by_shard), lambda s, b: build(by_shard[s], b), schema), whole


# A delta build needs the vectors and text of the changed rows only. Their keys are broadcast
# to pick them (the driver handles at most this many); past it every row travels whole.
MAX_BROADCAST_CHANGES = 200_000


def _diff_rows(keyed: "DataFrame", tasks: list[Any]) -> "tuple[DataFrame, int, DataFrame] | None":
    """The table's changes against the tasks' bases: rows the bases lack, whole, and base pairs the table lacks,
    as keys flagged ``_masked`` (:func:`~sparkrag.index.build.whole_rows`).

    Only when every task has a base with its pairs file (an embedded store on a POSIX path)
    and may write a delta. One join of the table's and the bases' pairs finds both; the
    shuffle to the tasks then carries the changes, not the shards, and a task knows the rest
    from its base's pairs.

    Returns:
        (rows, rows sent whole, the cached frame of differences to unpersist), or None.
    """
    from functools import reduce

    from pyspark.sql import functions as F

    from sparkrag.index.build import PAIRS_FILE

    paths = {t.shard: os.path.join(t.root, t.base, PAIRS_FILE) for t in tasks if t.root and t.base and t.compact_at > 0}
    if len(paths) < len(tasks) or not all(os.path.isfile(p) for p in paths.values()):
        return None
    spark, shard_type = keyed.sparkSession, keyed.schema["_shard"].dataType
    base = reduce(lambda a, b: a.unionByName(b), [
        spark.read.parquet(f"file://{p}").select("chunk_id", "doc_hash", F.lit(s).cast(shard_type).alias("_shard"))
        for s, p in paths.items()])
    narrow = keyed.where(F.col("_shard").isin(list(paths))).select("chunk_id", "doc_hash", "_shard")
    keys = ["chunk_id", "doc_hash", "_shard"]
    diff = (narrow.withColumn("_new", F.lit(True)).join(base.withColumn("_old", F.lit(True)), keys, "full_outer")
            .where(F.col("_new").isNull() | F.col("_old").isNull())
            .select(*keys, F.col("_old").isNull().alias("_added")).cache())
    n_changed = diff.where("_added").count()
    if n_changed > MAX_BROADCAST_CHANGES:
        diff.unpersist()
        return None
    wide = chroma_rows(keyed)
    changed = diff.where("_added").select("chunk_id", "doc_hash")
    whole = wide.join(F.broadcast(changed), ["chunk_id", "doc_hash"], "left_semi").withColumn("_masked", F.lit(False))
    masked = diff.where(~F.col("_added")).select(
        *[F.col(f.name) if f.name in keys else F.lit(None).cast(f.dataType).alias(f.name) for f in wide.schema.fields],
        F.lit(True).alias("_masked"))
    return whole.unionByName(masked), n_changed, diff
