"""Delta I/O through sparkrag's layer vs plain Spark parquet, in the same run.

200k rows of (id, ~500-char text, 384-float embedding) are cached, then written and read
back both ways. Prints rows/s and the ratio layer / parquet (goal: write >= 1.0x, read >= 0.8x).

    .venv/bin/python benchmarks/delta_io.py [--rows 200000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from sparkrag.config import SparkConfig, TablesConfig
from sparkrag.spark import get_spark
from sparkrag.delta import open_tables


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _consume(df) -> None:
    """Decode every column (a count alone would let parquet skip the data)."""
    df.selectExpr("sum(id)", "sum(length(text))", "sum(aggregate(embedding, 0D, (a, x) -> a + x))").collect()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2, help="best of N for each figure")
    args = parser.parse_args(argv)

    spark = get_spark(SparkConfig(master="local[2]", app_name="bench-delta-io"))
    tables = open_tables(spark, TablesConfig())
    data = (
        spark.range(args.rows, numPartitions=4)
        .selectExpr(
            "id",
            "substring(repeat(concat(sha2(cast(id as string), 256), ' '), 8), 1, 500) AS text",
            "transform(sequence(1, 384), i -> cast((hash(id, i) % 1000) / 1000.0 AS float)) AS embedding",
        )
        .cache()
    )
    data.count()
    root = tempfile.mkdtemp(prefix="bench-delta-io-")
    figures: dict[str, list[float]] = {"parquet_write": [], "layer_write": [], "parquet_read": [], "layer_read": []}
    try:
        for i in range(args.repeat):
            pq_path, delta_path = f"{root}/pq{i}", f"{root}/delta{i}"
            figures["parquet_write"].append(_timed(lambda: data.write.mode("overwrite").parquet(pq_path)))
            figures["layer_write"].append(_timed(lambda: tables.write(data, delta_path, mode="overwrite")))
            figures["parquet_read"].append(_timed(lambda: _consume(spark.read.parquet(pq_path))))
            figures["layer_read"].append(_timed(lambda: _consume(tables.read(delta_path))))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {k: min(v) for k, v in figures.items()}
    rate = {k: args.rows / v for k, v in best.items()}
    print(f"rows={args.rows} backend={tables.backend} (best of {args.repeat})")
    for op in ("write", "read"):
        base, ours = rate[f"parquet_{op}"], rate[f"layer_{op}"]
        print(f"{op:5s}  parquet {base:10,.0f} rows/s   layer {ours:10,.0f} rows/s   ratio {ours / base:.2f}x")
    return {**rate, "write_ratio": rate["layer_write"] / rate["parquet_write"],
            "read_ratio": rate["layer_read"] / rate["parquet_read"]}


if __name__ == "__main__":
    main()
