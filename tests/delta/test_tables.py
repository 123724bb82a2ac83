"""The Delta I/O layer on real Spark (local[2]) and real Delta tables, checked by two readers."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from sparkrag.config import TablesConfig
from sparkrag.errors import SchemaError, TableError
from sparkrag.delta import open_tables

UTC = dt.timezone.utc
ALL_TYPES = (
    "id long, name string, score double, vec array<float>, ts timestamp, "
    "meta map<string,string>, ctx array<struct<chunk_id:string,rank:int,distance:double>>"
)


def _rows(start: int, n: int, *, name: str = "n") -> list[tuple]:
    return [
        (
            i,
            f"{name}{i}",
            i / 3,
            [float(i), 0.5],
            dt.datetime(1500 + i, 1, 1, 12, 30, tzinfo=UTC) if i % 2 else dt.datetime(2024, 5, 1, tzinfo=UTC),
            {"k": str(i)} if i % 3 else None,
            [(f"c{i}", 1, 0.25)],
        )
        for i in range(start, start + n)
    ]


@pytest.fixture(scope="module")
def tables(spark):
    return open_tables(spark, TablesConfig())


def _deltars_rows(path: str) -> list[dict]:
    return sorted(DeltaTable(path).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])


@pytest.mark.delta_rs_only
def test_backend_is_delta_rs_without_the_connector(tables):
    assert tables.backend == "delta-rs"


def test_round_trip_every_column_type_read_by_spark_and_delta_rs(spark, tables, tmp_path):
    path = str(tmp_path / "t")
    df = spark.createDataFrame(_rows(0, 6), ALL_TYPES)
    metrics = tables.write(df, path)
    assert metrics["version"] == 0 and metrics["committed"]

    got = sorted(tables.read(path).collect(), key=lambda r: r.id)
    assert [tuple(r) for r in got] == [tuple(r) for r in sorted(df.collect(), key=lambda r: r.id)]
    # Spark's default INT96 timestamps would read back as 2084 in delta-rs; micros do not.
    independent = _deltars_rows(path)
    assert independent[1]["ts"] == dt.datetime(1501, 1, 1, 12, 30, tzinfo=UTC)
    assert independent[0]["ts"] == dt.datetime(2024, 5, 1, tzinfo=UTC)
    assert independent[1]["meta"] == [("k", "1")] and independent[0]["meta"] is None
    assert independent[2]["ctx"] == [{"chunk_id": "c2", "rank": 1, "distance": 0.25}]
    assert independent[3]["vec"] == [3.0, 0.5]
    # ...and through the SQL path (a temporary view over the data source).
    spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW rt USING delta OPTIONS (path '{path}')")
    assert spark.sql("SELECT count(*) AS n, max(id) AS m FROM rt").first().asDict() == {"n": 6, "m": 5}


def test_append_overwrite_history_and_time_travel(spark, tables, tmp_path):
    path = str(tmp_path / "t")
    tables.write(spark.createDataFrame(_rows(0, 3), ALL_TYPES), path)
    tables.write(spark.createDataFrame(_rows(3, 2), ALL_TYPES), path, mode="append")
    assert tables.read(path).count() == 5
    tables.write(spark.createDataFrame(_rows(10, 1), ALL_TYPES), path, mode="overwrite")
    assert [r.id for r in tables.read(path).collect()] == [10]
    assert len(_deltars_rows(path)) == 1
    assert tables.read(path, version=1).count() == 5
    history = tables.history(path)
    assert [h["version"] for h in history] == [2, 1, 0]
    assert tables.version(path) == 2


def test_idempotent_append_with_txn(spark, tables, tmp_path):
    path = str(tmp_path / "t")
    df = spark.createDataFrame(_rows(0, 3), ALL_TYPES)
    first = tables.write(df, path, txn=("ingest-run-1", 7))
    again = tables.write(df, path, txn=("ingest-run-1", 7))
    assert first["committed"] and not again["committed"]
    assert tables.read(path).count() == 3
    # no orphan data files from the skipped write
    parquet = [f for f in os.listdir(path) if f.endswith(".parquet")]
    assert len(parquet) == len(DeltaTable(path).file_uris())


def test_merge_updates_inserts_and_noop_rerun_rewrites_nothing(spark, tables, tmp_path):
    path = str(tmp_path / "t")
    tables.write(spark.createDataFrame(_rows(0, 4), ALL_TYPES), path)
    source = spark.createDataFrame(_rows(2, 4, name="changed"), ALL_TYPES)  # ids 2,3 change; 4,5 new
    m1 = tables.merge(source, path, keys=["id"])
    assert (m1["num_target_rows_updated"], m1["num_target_rows_inserted"]) == (2, 2)
    version = tables.version(path)
    m2 = tables.merge(source, path, keys=["id"])
    assert m2["num_target_files_added"] == 0 and m2["num_target_rows_updated"] == 0
    assert tables.version(path) in (version, version + 1)  # an empty commit at most
    rows = {r["id"]: r["name"] for r in _deltars_rows(path)}
    assert rows == {0: "n0", 1: "n1", 2: "changed2", 3: "changed3", 4: "changed4", 5: "changed5"}


def test_merge_creates_missing_table_and_delete_keys(spark, tables, tmp_path):
    path = str(tmp_path / "t")
    tables.merge(spark.createDataFrame(_rows(0, 5), ALL_TYPES), path, keys=["id"])
    assert tables.read(path).count() == 5
    keys = spark.createDataFrame([(1,), (3,), (99,)], "id long")
    out = tables.delete_keys(keys, path, keys=["id"])
    assert out["num_target_rows_deleted"] == 2
    assert sorted(r["id"] for r in _deltars_rows(path)) == [0, 2, 4]


@pytest.mark.delta_rs_only
def test_files_a_delete_rewrites_keep_row_groups_spark_can_split(spark, tables, tmp_path, monkeypatch):
    """delta-rs rewrites a touched file as one row group unless told otherwise, and Spark reads a row group in
    one task: a rerun would read the rewritten table on one core."""
    import pyarrow.parquet as pq

    from sparkrag.delta import delta_rs

    monkeypatch.setattr(delta_rs, "REWRITE_ROW_GROUP_ROWS", 100)
    path = str(tmp_path / "t")
    tables.write(spark.createDataFrame(_rows(0, 1000), ALL_TYPES).coalesce(1), path)
    tables.delete_keys(spark.createDataFrame([(5,)], "id long"), path, keys=["id"])
    tables.delete_where(path, "id = 7")
    files = [u.removeprefix("file://") for u in DeltaTable(path).file_uris()]
    assert len(files) == 1 and pq.ParquetFile(files[0]).metadata.num_row_groups == 10  # 998 rows
    assert tables.read(path).count() == 998


def test_delete_where(spark, tables, tmp_path):
    path = str(tmp_path / "t")
    tables.write(spark.createDataFrame(_rows(0, 6), ALL_TYPES), path)
    out = tables.delete_where(path, "id >= 4")
    assert out["num_deleted_rows"] == 2
    assert sorted(r.id for r in tables.read(path).collect()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "bad_schema, column",
    [
        ("id long, name double", "name"),  # wrong type
        (ALL_TYPES + ", extra string", "extra"),  # extra column would vanish silently
        ("id long, name string", "score"),  # missing column would read back null
    ],
)
def test_wrong_schema_is_refused_and_table_unchanged(spark, tables, tmp_path, bad_schema, column):
    path = str(tmp_path / "t")
    tables.write(spark.createDataFrame(_rows(0, 2), ALL_TYPES), path)
    files_before = sorted(os.listdir(path))
    names = [f.split()[0] for f in bad_schema.split(", ")]
    values = {"id": 9, "name": 1.5 if "name double" in bad_schema else "x", "extra": "e"}
    if len(names) > 2 and "extra" in names:
        bad = spark.createDataFrame([_rows(9, 1)[0] + ("e",)], bad_schema)
    else:
        bad = spark.createDataFrame([tuple(values[n] for n in names)], bad_schema)
    with pytest.raises(SchemaError, match=repr(column)):
        tables.write(bad, path)
    assert tables.version(path) == 0
    assert sorted(os.listdir(path)) == files_before
    assert len(_deltars_rows(path)) == 2


@pytest.mark.delta_rs_only
def test_data_source_refuses_wrong_schema_at_commit(spark, tables, tmp_path):
    """Job code calling df.write.format('delta') directly gets the same protection."""
    path = str(tmp_path / "t")
    tables.write(spark.createDataFrame(_rows(0, 2), ALL_TYPES), path)
    bad = spark.createDataFrame([(1, 2.0)], "id long, name double")
    with pytest.raises(Exception, match="column 'name'"):
        bad.write.format("delta").mode("append").save(path)
    assert tables.version(path) == 0 and len(_deltars_rows(path)) == 2
    assert not [f for f in os.listdir(path) if f.endswith(".parquet") and f not in
                {os.path.basename(u) for u in DeltaTable(path).file_uris()}]


def test_column_mapping_table_reads_right_columns(spark, tables, tmp_path):
    path = str(tmp_path / "cm")
    data = pa.table({"id": pa.array(range(10), pa.int64()), "name": [f"n{i}" for i in range(10)]})
    write_deltalake(path, data, configuration={"delta.columnMapping.mode": "name"})
    DeltaTable(path).delete("id < 3")
    rows = sorted((r.id, r.name) for r in tables.read(path).collect())
    assert rows == [(i, f"n{i}") for i in range(3, 10)]


def test_catalog_style_names_resolve_under_root(spark, tmp_path):
    tables = open_tables(spark, TablesConfig(root=str(tmp_path / "root")))
    tables.write(spark.createDataFrame(_rows(0, 2), ALL_TYPES), "rag.docs")
    assert DeltaTable.is_deltatable(str(tmp_path / "root" / "rag" / "docs"))
    assert tables.read("rag.docs").count() == 2
    assert tables.register_views({"docs": "rag.docs"}) == ["docs"]
    assert spark.sql("SELECT count(*) FROM docs").first()[0] == 2


def test_missing_table_is_a_clear_error(tables, tmp_path):
    with pytest.raises(TableError, match="no Delta table"):
        tables.read(str(tmp_path / "nope"))
    assert tables.version(str(tmp_path / "nope")) is None


def test_two_processes_appending_concurrently_land_every_row(tmp_path):
    path = str(tmp_path / "t")
    script = textwrap.dedent(
        f"""
        import sys
        from sparkrag.config import SparkConfig, TablesConfig
        from sparkrag.spark import get_spark
        from sparkrag.delta import open_tables
        spark = get_spark(SparkConfig(master="local[1]", shuffle_partitions=1,
                                      conf={{"spark.driver.memory": "1g"}}))
        tables = open_tables(spark, TablesConfig())
        worker = int(sys.argv[1])
        for batch in range(3):
            ids = [(worker * 1000 + batch * 10 + i,) for i in range(10)]
            tables.write(spark.createDataFrame(ids, "id long"), {path!r})
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], stderr=subprocess.PIPE) for w in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
    ids = DeltaTable(path).to_pyarrow_table().column("id").to_pylist()
    assert len(ids) == 60 and len(set(ids)) == 60
    assert DeltaTable(path).version() == 5
