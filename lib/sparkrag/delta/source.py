"""A Spark Python data source named ``delta``, backed by delta-rs, for Sparks without the Delta connector.

With it registered, ``spark.read.format("delta").load(path)``,
``df.write.format("delta").mode("append"|"overwrite").save(path)`` and
``CREATE TEMPORARY VIEW v USING delta OPTIONS (path '...')`` work unchanged on a laptop or
in CI, and produce real Delta tables (any Delta reader, native Spark included, reads them).

Writes: each task writes one parquet file with pyarrow and returns its add-action fields;
the driver checks the schema and commits once (``create_write_transaction`` on an existing
table, ``create_table_with_add_actions`` for a new one); ``abort`` deletes the files, so a
failed job leaves the table as it was. ``txnAppId``/``txnVersion`` make appends idempotent,
as with the native connector.

Reads: one partition per data file when the table has neither deletion vectors nor column
mapping (a plain parquet read is then exact), else one ``DeltaTable.scan()`` partition,
which applies them.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.types import StructType

from sparkrag.errors import TableError
from sparkrag.schemas import check_schema

__all__ = ["DeltaRsDataSource", "spark_schema_of", "table_needs_scan", "absolute_path"]

_COMMIT_RETRIES = 5
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # s3://, abfss://, file:/, dbfs:/


@dataclass
class _FileWritten(WriterCommitMessage):
    path: str  # relative to the table root
    size: int
    num_records: int
    stats: str
    modification_time: int


@dataclass
class _NothingWritten(WriterCommitMessage):
    """A task whose partition was empty (Spark wants a message from every task)."""


@dataclass
class _ScanPartition(InputPartition):
    files: list[str] = field(default_factory=list)  # absolute paths; empty: scan() the table


def spark_schema_of(delta_table: Any) -> StructType:
    """The Spark schema of a delta-rs table (Delta schema JSON is Spark's own format)."""
    return StructType.fromJson(json.loads(delta_table.schema().to_json()))


def table_needs_scan(delta_table: Any) -> bool:
    """True when plain parquet reads of the data files could be wrong or incomplete.

    Deletion vectors (rows reappear), column mapping (columns read as null) and partition
    columns (not stored in the files) all need delta-rs's own scan.
    """
    config = delta_table.metadata().configuration or {}
    if config.get("delta.columnMapping.mode", "none") != "none":
        return True
    if delta_table.metadata().partition_columns:
        return True
    # Any table that may carry deletion vectors is scanned: delta-rs never writes them,
    # so such tables come from Spark/Databricks, and a plain read would resurrect rows.
    return "deletionVectors" in set(delta_table.protocol().reader_features or [])


class DeltaRsDataSource(DataSource):
    """``format("delta")`` through delta-rs. Options: ``path``, ``versionAsOf``,
    ``txnAppId``/``txnVersion``, ``overwriteSchema`` (case-insensitive, as in Spark)."""

    @classmethod
    def name(cls) -> str:
        return "delta"

    def _path(self) -> str:
        path = self.options.get("path")
        if not path:
            raise TableError("format('delta') needs a path: .load(path) / .save(path) / OPTIONS (path '...')")
        return absolute_path(path)

    def schema(self) -> StructType:
        return spark_schema_of(_open(self._path(), self.options.get("versionAsOf")))

    def reader(self, schema: StructType) -> "DataSourceReader":
        return _DeltaRsReader(self._path(), self.options.get("versionAsOf"), schema)

    def writer(self, schema: StructType, overwrite: bool) -> "DataSourceArrowWriter":
        # Spark hands options over case-insensitively; keep them lower-cased.
        return _DeltaRsWriter(self._path(), schema, overwrite, {k.lower(): v for k, v in self.options.items()})


def absolute_path(path: str) -> str:
    """``path`` made absolute against this process's working directory; URIs unchanged.

    Called where Spark plans the read or write (the driver), so that executors, whose
    working directories differ on a cluster, get the path the driver meant (issue 12).
    """
    return path if _URI.match(path) else os.path.abspath(path)


def _open(path: str, version: Any = None) -> Any:
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(path):
        raise TableError(f"no Delta table at {path}")
    return DeltaTable(path, version=int(version)) if version is not None else DeltaTable(path)


class _DeltaRsReader(DataSourceReader):
    def __init__(self, path: str, version: Any, schema: StructType) -> None:
        self.path, self.version, self.schema = path, version, schema

    def partitions(self) -> list[_ScanPartition]:
        table = _open(self.path, self.version)
        if table_needs_scan(table):
            return [_ScanPartition(files=[])]
        return [_ScanPartition(files=[uri]) for uri in table.file_uris()] or [_ScanPartition(files=["-"])]

    def read(self, partition: _ScanPartition) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import to_arrow_schema

        if partition.files == ["-"]:  # an empty table: nothing to read
            return
        # delta-rs writes string_view and names map entries its own way: cast every
        # batch to exactly the Arrow schema Spark expects.
        target = to_arrow_schema(self.schema, timezone="UTC")
        columns = self.schema.fieldNames()
        if not partition.files:
            # scan() streams arro3 batches; the Arrow C stream interface makes them pyarrow.
            batches = pa.RecordBatchReader.from_stream(_open(self.path, self.version).scan(columns=columns))
        else:
            batches = (b for uri in partition.files
                       for b in pq.ParquetFile(_local(uri)).iter_batches(columns=columns, batch_size=8192))
        for batch in batches:
            yield batch.select(columns).cast(target)


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


class _DeltaRsWriter(DataSourceArrowWriter):
    def __init__(self, path: str, schema: StructType, overwrite: bool, options: dict[str, str]) -> None:
        self.path, self.schema, self.overwrite, self.options = path, schema, overwrite, options

    def write(self, iterator: Iterator[Any]) -> WriterCommitMessage:
        import pyarrow.parquet as pq

        os.makedirs(self.path, exist_ok=True)
        rel = f"part-{uuid.uuid4().hex}-c000.snappy.parquet"
        full = os.path.join(self.path, rel)
        writer, rows, stats = None, 0, _Stats()
        try:
            for batch in iterator:
                if batch.num_rows == 0:
                    continue
                if writer is None:
                    writer = pq.ParquetWriter(full, batch.schema, compression="snappy")
                writer.write_batch(batch)
                rows += batch.num_rows
                stats.update(batch)
        except BaseException:
            if writer is not None:
                writer.close()
                os.remove(full)
            raise
        if writer is None:
            return _NothingWritten()
        writer.close()
        return _FileWritten(rel, os.path.getsize(full), rows, stats.to_json(rows), int(time.time() * 1000))

    def commit(self, messages: list[Any]) -> None:
        files = [m for m in messages if isinstance(m, _FileWritten)]
        try:
            commit_files(self.path, self.schema, files, overwrite=self.overwrite, options=self.options)
        except BaseException:
            self.abort(messages)
            raise

    def abort(self, messages: list[Any]) -> None:
        for m in messages:
            if isinstance(m, _FileWritten):
                try:
                    os.remove(os.path.join(self.path, m.path))
                except FileNotFoundError:
                    pass


def commit_files(path: str, schema: StructType, files: list[_FileWritten], *, overwrite: bool, options: dict[str, str]) -> None:
    """Commit written files as one Delta transaction, checking the schema first and retrying conflicts."""
    from deltalake import DeltaTable, Schema
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, CommitProperties, Transaction, create_table_with_add_actions
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow_schema = to_arrow_schema(schema, timezone="UTC")
    actions = [AddAction(f.path, f.size, {}, f.modification_time, True, f.stats) for f in files]
    app_id, app_version = options.get("txnappid"), options.get("txnversion")
    txns = [Transaction(app_id, int(app_version))] if app_id and app_version is not None else None
    props = CommitProperties(app_transactions=txns, max_commit_retries=_COMMIT_RETRIES)
    overwrite_schema = str(options.get("overwriteschema", "false")).lower() == "true"
    for attempt in range(_COMMIT_RETRIES + 1):
        try:
            if not DeltaTable.is_deltatable(path):
                create_table_with_add_actions(
                    path, Schema.from_arrow(arrow_schema), actions, mode="error", commit_properties=props
                )
                return
            table = DeltaTable(path)
            if txns and (table.transaction_version(app_id) or -1) >= int(app_version):
                raise _AlreadyCommitted()
            if not (overwrite and overwrite_schema):
                check_schema(spark_schema_of(table), schema, table=path)
            table.create_write_transaction(
                actions, "overwrite" if overwrite else "append", Schema.from_arrow(arrow_schema), commit_properties=props
            )
            return
        except _AlreadyCommitted:
            for f in files:  # this (app id, version) landed before: drop the duplicate files
                os.remove(os.path.join(path, f.path))
            return
        except CommitFailedError:
            if attempt == _COMMIT_RETRIES:
                raise
            time.sleep(min(0.2 * 2**attempt, 5.0))
        except Exception as exc:  # a concurrent creator won the race: append instead
            if "already exists" in str(exc).lower() and attempt < _COMMIT_RETRIES:
                continue
            raise


class _AlreadyCommitted(Exception):
    pass


class _Stats:
    """numRecords, nullCount and min/max of top-level primitive columns, for data skipping."""

    _TYPES = ("int", "uint", "float", "double", "timestamp", "date", "bool")

    def __init__(self) -> None:
        self.nulls: dict[str, int] = {}
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}

    def update(self, batch: Any) -> None:
        import pyarrow.compute as pc
        import pyarrow.types as pat

        for name, col in zip(batch.schema.names, batch.columns):
            if pat.is_nested(col.type):
                continue
            self.nulls[name] = self.nulls.get(name, 0) + col.null_count
            if not str(col.type).startswith(self._TYPES) or pat.is_boolean(col.type):
                continue
            mm = pc.min_max(col)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo is None:
                continue
            self.mins[name] = lo if name not in self.mins else min(self.mins[name], lo)
            self.maxs[name] = hi if name not in self.maxs else max(self.maxs[name], hi)

    def to_json(self, rows: int) -> str:
        def fmt(v: Any) -> Any:
            if hasattr(v, "isoformat"):
                text = v.isoformat()
                return text.replace("+00:00", "Z") if "+00:00" in text else text
            return v

        return json.dumps(
            {
                "numRecords": rows,
                "minValues": {k: fmt(v) for k, v in self.mins.items()},
                "maxValues": {k: fmt(v) for k, v in self.maxs.items()},
                "nullCount": self.nulls,
            }
        )
