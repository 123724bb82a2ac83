"""What the driver hands executors must not depend on its local disk or working directory.

On a cluster an executor sees neither the driver's /tmp nor its working directory.
tests/test_multinode.py checks the jobs end to end on a real two-worker cluster; these
are the fast local checks of each rule, one per place that used to break it (issue 12).
"""

from __future__ import annotations

import os
import tempfile

import pytest
from deltalake import DeltaTable

from sparkrag.config import TablesConfig
from sparkrag.index.layout import ShardStore
from sparkrag.spark import is_local_master
from sparkrag.delta import open_tables


@pytest.mark.delta_rs_only
def test_delta_rs_merge_stages_in_the_table_folder_not_the_driver_tmp(spark, tmp_path, monkeypatch):
    tables = open_tables(spark, TablesConfig(root=str(tmp_path), backend="delta-rs"))
    path = str(tmp_path / "t")
    tables.write(spark.createDataFrame([(1, "a"), (2, "b")], "id long, v string"), path)
    source = spark.createDataFrame([(2, "B"), (3, "c")], "id long, v string")
    # Before the fix the merge staged its source with tempfile.mkdtemp() on the driver,
    # where executors on other nodes cannot write: here that fails at once.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-driver-tmp"))
    metrics = tables.merge(source, path, keys=["id"], when_matched="update")
    monkeypatch.undo()
    assert metrics["num_target_rows_inserted"] == 1 and metrics["num_target_rows_updated"] == 1
    rows = sorted(DeltaTable(path).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "v": "a"}, {"id": 2, "v": "B"}, {"id": 3, "v": "c"}]
    assert not os.path.exists(os.path.join(path, "_sparkrag_staging"))  # cleaned up after the commit
    assert tables.read(path).count() == 3  # the staging folder never shows up as table data


def test_relative_table_paths_are_resolved_by_the_driver(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tables = open_tables(spark, TablesConfig(root="unused"))  # either backend
    # the native connector's SQL (DESCRIBE HISTORY delta.`rel/t`) takes absolute paths only
    assert tables.location("rel/t") == str(tmp_path / "rel" / "t")
    tables.write(spark.createDataFrame([(1,)], "id long"), "rel/t")
    assert tables.version("rel/t") == 0
    # the data files are in the folder relative to the driver's working directory (before
    # the fix, each task wrote them relative to its own, and the table had a log but no data)
    assert DeltaTable(str(tmp_path / "rel" / "t")).to_pyarrow_table().num_rows == 1
    assert tables.read("rel/t").count() == 1


@pytest.mark.parametrize("path, expected", [
    ("rel/t", None), ("/abs/t", "/abs/t"), ("s3://b/t", "s3://b/t"), ("abfss://c@a.dfs.core.windows.net/t", None),
    ("file:/x/t", "file:/x/t"), ("dbfs:/x/t", "dbfs:/x/t"),
])
@pytest.mark.delta_rs_only
def test_absolute_path(path, expected, tmp_path, monkeypatch):
    from sparkrag.delta.source import absolute_path  # Spark 4's Python data source API

    monkeypatch.chdir(tmp_path)
    want = expected or (path if ":" in path else str(tmp_path / path))
    assert absolute_path(path) == want


def test_shard_store_root_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ShardStore("data/chroma", "c")
    assert store.root == str(tmp_path / "data" / "chroma")
    assert ShardStore("file:///x/chroma", "c").root == "/x/chroma"


def test_default_parallelism_is_set_only_on_local_masters(spark):
    # The session fixture is local[2] with shuffle_partitions=2: the laptop default applies.
    assert spark.sparkContext.getConf().get("spark.default.parallelism") == "2"
    assert all(is_local_master(m) for m in ("local", "local[2]", "local[*]", "local-cluster[2,1,1024]"))
    assert not any(is_local_master(m) for m in ("spark://127.0.0.1:7077", "yarn", "k8s://https://h:443"))
