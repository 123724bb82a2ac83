"""The sync's per-shard plan comes from a Spark aggregate, and agrees with the shard builds."""

from __future__ import annotations

from sparkrag.index.layout import shard_column, shard_fingerprint
from sparkrag.index.shard_jobs import shard_summaries

ROWS = [  # ids that are prefixes of others, non-ASCII ids, a null hash, a repeated pair
    ("d1", "d1#0", "h1"), ("d1", "d1#0x", "h2"), ("d2", "Beyoncé#3", "h3"), ("d2", "Beyonce#3", None),
    ("d3", "z", "h4"), ("d3", "z", "h4"), ("d4", "日本#1", "h5"),
]


def test_per_shard_fingerprints_equal_the_python_digest_of_the_same_pairs(spark):
    n = 3
    keyed = spark.createDataFrame(ROWS, "doc_id string, chunk_id string, doc_hash string") \
        .withColumn("_shard", shard_column("doc_id", n))
    shards = {r["chunk_id"]: r["_shard"] for r in keyed.collect()}
    pairs: list[dict] = [{} for _ in range(n)]
    for _, cid, h in ROWS:
        pairs[shards[cid]][cid] = h
    fingerprints, counts = shard_summaries(keyed, n)
    assert fingerprints == [shard_fingerprint(p) for p in pairs]
    assert counts == [len(p) for p in pairs] and sum(counts) == 6


def test_no_table_means_empty_shards(spark):
    assert shard_summaries(None, 2) == ([shard_fingerprint({})] * 2, [0, 0])
