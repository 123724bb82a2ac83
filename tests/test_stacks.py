"""The same code on every Spark + Delta stack (`make test STACK=...`): what differs is detected.

Each test runs on whichever stack the session is on (conftest ``STACK``); the Makefile runs
this file on delta-rs, spark4-native and spark3.5-native.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import NATIVE, STACK

from sparkrag.config import TablesConfig
from sparkrag.errors import TableError
from sparkrag.delta import detect_backend, open_tables, split_name

ENGINES = {  # what each stack writes as commitInfo.engineInfo
    "delta-rs": ("delta-rs:py-",),
    "spark4-native": ("Apache-Spark/4.", "Delta-Lake/4."),
    "spark3.5-native": ("Apache-Spark/3.5", "Delta-Lake/3."),
}


def _engine_info(path: str) -> str:
    log = Path(path) / "_delta_log" / f"{0:020d}.json"
    commits = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return next(c["commitInfo"] for c in commits if "commitInfo" in c).get("engineInfo", "")


def test_writes_come_from_the_stacks_own_delta_engine(spark, tmp_path):
    tables = open_tables(spark, TablesConfig(root=str(tmp_path)))
    tables.write(spark.range(3), str(tmp_path / "t"))
    engine = _engine_info(str(tmp_path / "t"))
    assert all(part in engine for part in ENGINES[STACK]), (STACK, engine)
    assert tables.backend == ("native" if NATIVE else "delta-rs")


def test_names_that_need_backticks_are_names_not_paths(spark, tmp_path):
    tables = open_tables(spark, TablesConfig(root=str(tmp_path / "root")))
    assert split_name("dev-cat.rag.chunks") == ["dev-cat", "rag", "chunks"]
    assert split_name("`dev cat`.rag.`my-chunks`") == ["dev cat", "rag", "my-chunks"]
    assert split_name("data/tables/chunks") is None and split_name("s3://b/t") is None
    # A local session has no persistent catalog: names live under tables.root on both backends.
    tables.write(spark.createDataFrame([(1, {"k": "v"})], "id long, m map<string,string>"), "dev-cat.rag.chunks")
    assert os.path.isdir(tmp_path / "root" / "dev-cat" / "rag" / "chunks" / "_delta_log")
    source = spark.createDataFrame([(1, {"k": "w"}), (2, {"k": "v"})], "id long, m map<string,string>")
    out = tables.merge(source, "dev-cat.rag.chunks", keys=["id"])  # maps compared on native too
    assert (out["num_target_rows_updated"], out["num_target_rows_inserted"]) == (1, 1)
    assert sorted((r.id, r.m["k"]) for r in tables.read("dev-cat.rag.chunks").collect()) == [(1, "w"), (2, "v")]


@pytest.mark.skipif(not NATIVE, reason="the Spark catalog is the native connector's")
def test_native_catalog_names_with_hyphens_go_through_the_catalog(spark, tmp_path):
    from pyspark.errors import AnalysisException

    db, table = "dev-db", "my-chunks"  # Unity Catalog style
    try:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{db}` LOCATION '{tmp_path / 'db'}'")
    except AnalysisException:  # Spark 3.5's session catalog allows only [A-Za-z0-9_] names
        db, table = "dev_db", "my_chunks"
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{db}` LOCATION '{tmp_path / 'db'}'")
    tables = open_tables(spark, TablesConfig(catalog="spark", root=str(tmp_path / "unused")))
    name = f"{db}.{table}"
    assert tables.location(name) == name and tables.sql_ref(name) == f"`{db}`.`{table}`"
    assert not tables.exists(name) and tables.version(name) is None
    tables.write(spark.createDataFrame([(1, "a"), (2, "b")], "id long, s string"), name)
    assert spark.catalog.tableExists(f"`{db}`.`{table}`")
    tables.merge(spark.createDataFrame([(2, "c")], "id long, s string"), name, keys=["id"])
    assert tables.delete_where(name, "id = 1")["num_deleted_rows"] == 1
    assert [tuple(r) for r in tables.read(name).collect()] == [(2, "c")]
    assert [h["operation"] for h in tables.history(name)][:2] == ["DELETE", "MERGE"]
    assert not os.path.exists(tmp_path / "unused")


def test_delta_rs_preference_is_refused_clearly_where_it_cannot_work(spark):
    if not NATIVE:
        assert detect_backend(spark, "delta-rs") == "delta-rs"
        return
    with pytest.raises(TableError, match="native"):
        detect_backend(spark, "delta-rs")


def test_collect_arrow_on_every_spark(spark):
    from sparkrag.spark import collect_arrow

    table = collect_arrow(spark.createDataFrame([(1, "a"), (2, None)], "id long, s string"))
    assert table.to_pydict() == {"id": [1, 2], "s": ["a", None]}
    empty = collect_arrow(spark.range(0).selectExpr("id", "cast(id as string) as s"))
    assert empty.num_rows == 0 and empty.column_names == ["id", "s"]


def test_map_in_pandas_without_profile_support_degrades_with_a_warning(spark, caplog):
    import inspect

    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    from sparkrag.spark import map_in_pandas

    def double(batches):
        for pdf in batches:
            yield pdf.assign(id=pdf["id"] * 2)

    df = spark.range(4)
    assert sorted(r.id for r in map_in_pandas(df, double, "id long").collect()) == [0, 2, 4, 6]
    if "profile" in inspect.signature(df.mapInPandas).parameters:
        pytest.skip("this Spark gives stages their own ResourceProfile (exercised on GPU clusters)")
    profile = ResourceProfileBuilder().require(TaskResourceRequests().cpus(1)).build
    with caplog.at_level("WARNING", logger="sparkrag.spark"):
        got = map_in_pandas(df, double, "id long", profile=profile)
    assert sorted(r.id for r in got.collect()) == [0, 2, 4, 6]
    assert "spark.task.resource.gpu.amount" in caplog.text


@pytest.mark.skipif(not NATIVE, reason="checks the native backend")
def test_native_backend_needs_neither_delta_rs_nor_the_python_data_source(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from sparkrag.config import SparkConfig, TablesConfig
        from sparkrag.spark import get_spark
        from sparkrag.delta import open_tables
        spark = get_spark(SparkConfig(master="local[1]", shuffle_partitions=1))
        tables = open_tables(spark, TablesConfig(root={str(tmp_path)!r}))
        df = spark.createDataFrame([(1, "a")], "id long, s string")
        tables.write(df, "rag.t")
        tables.merge(df, "rag.t", keys=["id"])
        tables.delete_keys(df, "rag.t", keys=["id"])
        assert tables.backend == "native" and tables.read("rag.t").count() == 0
        loaded = [m for m in ("deltalake", "sparkrag.delta.source", "sparkrag.delta.delta_rs") if m in sys.modules]
        print("LOADED", loaded)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout, out.stdout
