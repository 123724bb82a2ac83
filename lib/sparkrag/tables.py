"""Delta read/write/merge/delete/history: the native connector when Spark has it, delta-rs when not.

One API, two backends, chosen at run time (``TablesConfig.backend``):

- ``native``: the Delta Lake connector is on the classpath (Databricks;
  ``spark-submit --packages io.delta:delta-spark_2.13:<v>``). Catalog names go through the
  Spark catalog; merges and deletes are Delta SQL.
- ``delta-rs``: the ``deltalake`` package. ``format("delta")`` is served by
  :mod:`sparkrag.delta_source`; merges and deletes run in delta-rs on the driver, streaming
  the source from staged parquet. Catalog-style names resolve to folders under
  ``TablesConfig.root`` (delta-rs has no metastore).

Example:
    >>> tables = open_tables(spark, TablesConfig())            # doctest: +SKIP
    >>> tables.write(df, "data/tables/chunks", mode="append")  # doctest: +SKIP
    >>> tables.read("data/tables/chunks").count()              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from sparkrag.config import TablesConfig
from sparkrag.errors import SchemaError, TableError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["Tables", "open_tables", "detect_backend"]

log = logging.getLogger(__name__)

Backend = Literal["native", "delta-rs"]
_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*){0,2}$")
_MERGE_STAGING = "_sparkrag_staging"  # delta-rs merges stage their source here, inside the table folder


def detect_backend(spark: "SparkSession", preference: str = "auto") -> Backend:
    """Pick the Delta backend and make ``format("delta")`` work on it.

    Registering the delta-rs data source under the name ``delta`` fails with
    ``DATA_SOURCE_ALREADY_EXISTS`` exactly when the JVM connector provides ``delta``; that
    failure is the detection (a py4j class lookup does not see ``spark.jars`` classes).
    """
    if preference == "native":
        return "native"
    from sparkrag.delta_source import DeltaRsDataSource

    try:
        spark.dataSource.register(DeltaRsDataSource)
    except Exception as exc:  # AnalysisException with error class DATA_SOURCE_ALREADY_EXISTS
        if "DATA_SOURCE_ALREADY_EXISTS" not in str(exc):
            raise
        if preference == "delta-rs":
            raise TableError("tables.backend=delta-rs, but this Spark already has the native Delta connector") from exc
        return "native"
    return "delta-rs"


def open_tables(spark: "SparkSession", cfg: TablesConfig | None = None) -> "Tables":
    """The Delta I/O layer for this session (backend detected once)."""
    cfg = cfg or TablesConfig()
    backend = detect_backend(spark, cfg.backend)
    log.info("Delta backend: %s", backend)
    return Tables(spark, cfg, backend)


class Tables:
    """Read, append, overwrite, merge, delete and inspect Delta tables by path or name."""

    def __init__(self, spark: "SparkSession", cfg: TablesConfig, backend: Backend) -> None:
        self.spark, self.cfg, self.backend = spark, cfg, backend

    # -- naming -----------------------------------------------------------------------
    def is_name(self, table: str) -> bool:
        """A catalog name (``schema.table``) rather than a path."""
        return bool(_NAME.match(table)) and "/" not in table

    def location(self, table: str) -> str:
        """Where the table's files are (delta-rs), or its catalog name / path (native)."""
        if not self.is_name(table):
            if self.backend == "native":
                return table
            from sparkrag.delta_source import absolute_path

            # Resolved here, on the driver: executors' working directories differ on a cluster.
            return absolute_path(table)
        if self.backend == "native":
            return table
        import os

        return os.path.abspath(os.path.join(self.cfg.root, *table.split(".")))

    def _sql_ref(self, table: str) -> str:
        return table if self.is_name(table) else f"delta.`{table}`"

    # -- inspect ----------------------------------------------------------------------
    def exists(self, table: str) -> bool:
        if self.backend == "native":
            if self.is_name(table):
                return bool(self.spark.catalog.tableExists(table))
            from delta.tables import DeltaTable as NativeDeltaTable

            return bool(NativeDeltaTable.isDeltaTable(self.spark, table))
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.location(table))

    def version(self, table: str) -> int | None:
        """The latest version, or None when the table does not exist."""
        if not self.exists(table):
            return None
        if self.backend == "native":
            return int(self.spark.sql(f"DESCRIBE HISTORY {self._sql_ref(table)} LIMIT 1").first()["version"])
        return self._delta(table).version()

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits newest first: version, timestamp, operation, operationParameters, ..."""
        if self.backend == "native":
            rows = self.spark.sql(f"DESCRIBE HISTORY {self._sql_ref(table)}" + (f" LIMIT {limit}" if limit else ""))
            return [r.asDict(recursive=True) for r in rows.collect()]
        return self._delta(table).history(limit)

    def schema(self, table: str):
        """The table's Spark schema."""
        if self.backend == "native":
            return self.read(table).schema
        from sparkrag.delta_source import spark_schema_of

        return spark_schema_of(self._delta(table))

    def _delta(self, table: str, version: int | None = None):
        from deltalake import DeltaTable

        path = self.location(table)
        if not DeltaTable.is_deltatable(path):
            raise TableError(f"no Delta table at {path}" + (f" (table {table})" if path != table else ""))
        return DeltaTable(path, version=version) if version is not None else DeltaTable(path)

    # -- read -------------------------------------------------------------------------
    def read(self, table: str, *, version: int | None = None) -> "DataFrame":
        """The table (at ``version``) as a DataFrame.

        On delta-rs, tables without deletion vectors, column mapping or partitions are
        read as plain parquet (as fast as parquet, with column pruning); others go
        through delta-rs's scan, which applies them.
        """
        if self.backend == "native":
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            return reader.table(table) if self.is_name(table) else reader.load(table)
        from sparkrag.delta_source import spark_schema_of, table_needs_scan

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

    # -- write ------------------------------------------------------------------------
    def write(
        self,
        df: "DataFrame",
        table: str,
        *,
        mode: Literal["append", "overwrite"] = "append",
        txn: tuple[str, int] | None = None,
        overwrite_schema: bool = False,
    ) -> dict[str, Any]:
        """Append or overwrite atomically; ``txn=(app_id, version)`` makes the write idempotent.

        Raises:
            SchemaError: the data's columns or types differ from the table's (the table
                is left unchanged).
        """
        if mode not in ("append", "overwrite"):
            raise TableError(f"write mode must be append or overwrite, got {mode!r}")
        before = self.version(table)
        if before is not None and not overwrite_schema:
            from sparkrag.delta_source import check_schema

            check_schema(self.schema(table), df.schema, table=table)
        writer = df.write.format("delta").mode(mode)
        if txn is not None:
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", str(txn[1]))
        if overwrite_schema:
            writer = writer.option("overwriteSchema", "true")
        start = time.perf_counter()
        self._retry(lambda: writer.saveAsTable(table) if self.backend == "native" and self.is_name(table)
                    else writer.save(self.location(table)))
        after = self.version(table)
        return {"table": table, "mode": mode, "version_before": before, "version": after,
                "committed": after != before, "seconds": round(time.perf_counter() - start, 3)}

    def _retry(self, action) -> Any:
        for attempt in range(self.cfg.commit_retries + 1):
            try:
                return action()
            except Exception as exc:  # concurrent commits: CommitFailedError / ConcurrentAppendException
                text = str(exc)
                if attempt == self.cfg.commit_retries or not ("CommitFailed" in text or "Concurrent" in text):
                    raise
                time.sleep(min(0.2 * 2**attempt, 5.0))

    # -- merge / delete ---------------------------------------------------------------
    def merge(
        self,
        source: "DataFrame",
        table: str,
        *,
        keys: list[str],
        when_matched: Literal["update", "update_changed", "delete", "ignore"] = "update_changed",
        compare: list[str] | None = None,
        when_not_matched: Literal["insert", "ignore"] = "insert",
    ) -> dict[str, Any]:
        """Merge ``source`` into ``table`` on ``keys``; creates the table when missing.

        ``update_changed`` updates a matched row only when one of ``compare`` (default: all
        non-key columns) differs, so a rerun with the same data rewrites no file.

        Returns:
            rows inserted/updated/deleted and files added/removed, when the backend reports them.
        """
        missing = [k for k in keys + (compare or []) if k not in source.columns]
        if missing:
            raise SchemaError(f"merge into {table}: source lacks column(s) {missing}")
        if not self.exists(table):
            if when_not_matched == "ignore" or when_matched == "delete":
                return {"table": table, "created": False, "num_target_rows_inserted": 0}
            metrics = self.write(source, table, mode="append")
            return {**metrics, "created": True}
        from sparkrag.delta_source import check_schema

        if when_matched != "delete":
            check_schema(self.schema(table), source.schema, table=table)
        compare = compare or [c for c in source.columns if c not in keys]
        on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        changed = " OR ".join(f"(t.`{c}` IS DISTINCT FROM s.`{c}`)" for c in compare) or "FALSE"
        if self.backend == "native":
            return self._merge_native(source, table, on, changed, when_matched, when_not_matched)
        return self._merge_deltars(source, table, on, changed, when_matched, when_not_matched)

    def _merge_native(self, source, table, on, changed, when_matched, when_not_matched) -> dict[str, Any]:
        view = f"sparkrag_merge_src_{int(time.time() * 1e6)}"
        source.createOrReplaceTempView(view)
        clauses = {
            "update": "WHEN MATCHED THEN UPDATE SET *",
            "update_changed": f"WHEN MATCHED AND ({changed}) THEN UPDATE SET *",
            "delete": "WHEN MATCHED THEN DELETE",
            "ignore": "",
        }[when_matched]
        if when_not_matched == "insert":
            clauses += " WHEN NOT MATCHED THEN INSERT *"
        try:
            row = self._retry(lambda: self.spark.sql(
                f"MERGE INTO {self._sql_ref(table)} t USING {view} s ON {on} {clauses}").first())
        finally:
            self.spark.catalog.dropTempView(view)
        return {"table": table, **(row.asDict() if row else {})}

    def _merge_deltars(self, source, table, on, changed, when_matched, when_not_matched) -> dict[str, Any]:
        import pyarrow.dataset as pads
        from deltalake.exceptions import CommitFailedError

        staging = self._merge_staging_dir(table)
        try:
            # Stream the source from staged parquet rather than collecting it to the driver.
            source.write.mode("overwrite").parquet(staging)
            dataset = pads.dataset(staging, format="parquet")
            for attempt in range(self.cfg.commit_retries + 1):
                merger = self._delta(table).merge(
                    dataset.scanner().to_reader(), predicate=on, source_alias="s", target_alias="t")
                if when_matched == "update":
                    merger = merger.when_matched_update_all()
                elif when_matched == "update_changed":
                    merger = merger.when_matched_update_all(predicate=changed)
                elif when_matched == "delete":
                    merger = merger.when_matched_delete()
                if when_not_matched == "insert":
                    merger = merger.when_not_matched_insert_all()
                try:
                    return {"table": table, **merger.execute()}
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
        """Delete the rows matching a SQL ``predicate`` (Spark SQL / DataFusion common subset)."""
        if self.backend == "native":
            row = self._retry(lambda: self.spark.sql(f"DELETE FROM {self._sql_ref(table)} WHERE {predicate}").first())
            return {"table": table, **(row.asDict() if row else {})}
        return {"table": table, **self._delta(table).delete(predicate)}

    def delete_keys(self, keys_df: "DataFrame", table: str, *, keys: list[str]) -> dict[str, Any]:
        """Delete the rows whose ``keys`` appear in ``keys_df`` (a merge with WHEN MATCHED DELETE)."""
        return self.merge(keys_df.select(*keys).distinct(), table, keys=keys,
                          when_matched="delete", when_not_matched="ignore")

    # -- SQL --------------------------------------------------------------------------
    def register_views(self, views: dict[str, str]) -> list[str]:
        """Make each table queryable in SQL under a view name, on either backend.

        Native catalog tables need nothing; paths become temporary views
        (``CREATE TEMPORARY VIEW v USING delta OPTIONS (path ...)`` on delta-rs).
        """
        made = []
        for view, table in views.items():
            if not self.exists(table):
                continue
            self.read(table).createOrReplaceTempView(view)
            made.append(view)
        return made
