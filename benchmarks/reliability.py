"""What issue #17's safety checks cost an ingest: the repeated-chunk check, the UTF-8 check, the lock.

    .venv/bin/python benchmarks/reliability.py --chunks 200000 --docs 50000 --repeat 2

* heal check: ``_heal_duplicate_chunks`` on a chunks-shaped Delta table with no repeats (the
  every-run case), next to the plan's own read of the table's distinct ``(doc_id, doc_hash)``;
* UTF-8 check: ``prepare_documents`` over a documents table, counted, with the check and
  with it switched off (same run);
* lock: acquire + release of a run lock on local disk, mean of 50.

Prints best-of-``repeat`` seconds and the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from sparkrag import ingest
    from sparkrag.config import RagConfig, SparkConfig, load_config
    from sparkrag.locks import acquire_lock
    from sparkrag.spark import get_spark
    from sparkrag.tables import open_tables

    spark = get_spark(SparkConfig(master="local[2]", conf={"spark.ui.enabled": "false"}))
    root = Path(tempfile.mkdtemp(prefix="sparkrag-bench-rel-"))
    cfg = load_config(RagConfig, None, [f"tables.root={root}"])
    tables = open_tables(spark, cfg.tables)
    chunks = spark.range(args.chunks).select(
        F.sha2(F.col("id").cast("string"), 256).alias("chunk_id"), (F.col("id") % (args.chunks // 4)).cast("string")
        .alias("doc_id"), F.lit("h" * 64).alias("doc_hash"), F.repeat(F.lit("word "), 100).alias("text"))
    tables.write(chunks, cfg.names.chunks, mode="overwrite")
    docs = spark.range(args.docs).select(F.col("id").cast("string").alias("doc_id"), F.lit("t").alias("title"),
                                         F.repeat(F.lit("some text "), 150).alias("text"))
    tables.write(docs, cfg.names.documents, mode="overwrite")

    plan_read = best(lambda: tables.read(cfg.names.chunks).select("doc_id", "doc_hash").distinct().count(), args.repeat)
    heal = best(lambda: ingest._heal_duplicate_chunks(tables, cfg), args.repeat)
    raw = tables.read(cfg.names.documents)
    with_check = best(lambda: ingest.prepare_documents(raw, cfg, table="docs")[0].count(), args.repeat)
    with mock.patch.object(ingest, "_undecodable_columns", lambda df, cfg: []):  # the check switched off
        without = best(lambda: ingest.prepare_documents(raw, cfg, table="docs")[0].count(), args.repeat)
    start = time.perf_counter()
    for i in range(50):
        acquire_lock(str(root / "locks"), "bench", owner=f"r{i}", wait_seconds=0, stale_seconds=60).release()
    lock_ms = (time.perf_counter() - start) / 50 * 1000
    print(f"heal check on {args.chunks:,} chunks: {heal:.2f} s; plan's distinct-pairs read: {plan_read:.2f} s "
          f"({heal / plan_read:.2f}x)")
    print(f"prepare_documents on {args.docs:,} documents: {with_check:.2f} s with the UTF-8 check, "
          f"{without:.2f} s without ({with_check / without:.2f}x)")
    print(f"lock acquire + release: {lock_ms:.1f} ms")
    spark.stop()


if __name__ == "__main__":
    main()
