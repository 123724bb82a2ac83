"""The delta-rs backend of :class:`sparkrag.delta.tables.Tables`, for a Spark 4 without the connector.

Reads of tables without deletion vectors, column mapping or partitions are plain parquet
reads of the current files (as fast as parquet, with column pruning); others go through
the ``delta`` Python data source, which uses delta-rs's scan. Writes go through that data
source. Merges and deletes run in delta-rs on the driver, streaming the merge source.
delta-rs has no metastore: catalog-style names resolve under ``TablesConfig.root``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from typing import TYPE_CHECKING, Any

from sparkrag.errors import TableError
from sparkrag.delta.tables import Tables, split_name

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["DeltaRsTables"]

_MERGE_STAGING = "_sparkrag_staging"  # merges stage their source here, inside the table's folder
# Rows per row group of files a merge or delete rewrites. delta-rs writes a rewritten file as one
# row group by default, and Spark reads a row group in one task: a 1%-change rerun then read
# the whole rewritten documents or chunks table on one core (issue #13). Our own writes make
# row groups of one Arrow batch (spark.sql.execution.arrow.maxRecordsPerBatch, 10,000).
REWRITE_ROW_GROUP_ROWS = 10_000


class DeltaRsTables(Tables):
    """Delta tables through the ``deltalake`` package."""

    backend = "delta-rs"

    def location(self, table: str) -> str:
        """The table's folder; a relative path is resolved here, on the driver (executors'
        working directories differ on a cluster: issue 12)."""
        from sparkrag.delta.source import absolute_path

        where = super().location(table)
        return absolute_path(where) if split_name(table) is None else where

    def _delta(self, table: str, version: int | None = None):
        from deltalake import DeltaTable

        path = self.location(table)
        if not DeltaTable.is_deltatable(path):
            raise TableError(f"no Delta table at {path}" + (f" (table {table})" if path != table else ""))
        return DeltaTable(path, version=version) if version is not None else DeltaTable(path)

    def exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.location(table))

    def version(self, table: str) -> int | None:
        return self._delta(table).version() if self.exists(table) else None

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self._delta(table).history(limit)

    def schema(self, table: str):
        from sparkrag.delta.source import spark_schema_of

        return spark_schema_of(self._delta(table))

    def read(self, table: str, *, version: int | None = None) -> "DataFrame":
        from sparkrag.delta.source import spark_schema_of, table_needs_scan

        dt = self._delta(table, version)
        schema = spark_schema_of(dt)
        if table_needs_scan(dt):
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            return reader.load(self.location(table))
        files = dt.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).parquet(*files)

    def _save(self, writer: Any, table: str) -> None:
        writer.save(self.location(table))

    def _merge(self, source, table, on, changed, when_matched, when_not_matched) -> dict[str, Any]:
        import pyarrow.dataset as pads
        from deltalake.exceptions import CommitFailedError

        staging = self._merge_staging_dir(table)
        try:
            # Stream the source from staged parquet rather than collecting it to the driver.
            source.write.mode("overwrite").parquet(staging)
            dataset = pads.dataset(staging, format="parquet")
            for attempt in range(self.cfg.commit_retries + 1):
                merger = self._delta(table).merge(
                    dataset.scanner().to_reader(), predicate=on, source_alias="s", target_alias="t",
                    writer_properties=_rewrite_properties())
                if when_matched == "update":
                    merger = merger.when_matched_update_all()
                elif when_matched == "update_changed":
                    merger = merger.when_matched_update_all(predicate=changed)
                elif when_matched == "delete":
                    merger = merger.when_matched_delete()
                if when_not_matched == "insert":
                    merger = merger.when_not_matched_insert_all()
                try:
                    return merger.execute()
                except CommitFailedError:
                    if attempt == self.cfg.commit_retries:
                        raise
                    time.sleep(min(0.2 * 2**attempt, 5.0))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(staging))  # only when no other merge is staging there
            except OSError:
                pass
        raise AssertionError("unreachable")

    def _merge_staging_dir(self, table: str) -> str:
        """A fresh folder for a merge's source, inside the target table's own folder.

        The executors write the source there and the driver streams it into delta-rs, so
        it must be on storage both reach; the table's folder is (the driver's ``/tmp`` is
        not, on a cluster: issue 12). Delta readers ignore ``_``-prefixed folders.
        """
        return os.path.join(self.location(table), _MERGE_STAGING, uuid.uuid4().hex)

    def delete_where(self, table: str, predicate: str) -> dict[str, Any]:
        return {"table": table, **self._delta(table).delete(predicate, writer_properties=_rewrite_properties())}


def _rewrite_properties() -> Any:
    from deltalake import WriterProperties

    return WriterProperties(max_row_group_size=REWRITE_ROW_GROUP_ROWS)
