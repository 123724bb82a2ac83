"""The native backend of :class:`sparkrag.delta.tables.Tables`: the Delta Lake connector in the JVM.

Used on Databricks, on clusters started with ``--packages io.delta:delta-spark_<scala>:<v>``
and on our ``STACK=spark4-native`` / ``spark3.5-native``. Everything goes through Spark
SQL and the DataFrame API, so it needs neither delta-rs nor Python data sources (Spark
3.5 has none). Catalog names go through the Spark catalog when it is persistent.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sparkrag.errors import TableError
from sparkrag.delta.tables import Tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import DataType

__all__ = ["NativeTables"]

# MERGE's result row (Delta 2.x+) and DESCRIBE HISTORY's operationMetrics, in the names
# delta-rs uses, so that callers read one set of figures whatever the backend.
_MERGE_ROW = {"num_inserted_rows": "num_target_rows_inserted", "num_updated_rows": "num_target_rows_updated",
              "num_deleted_rows": "num_target_rows_deleted", "num_affected_rows": "num_target_rows_affected"}
_MERGE_HISTORY = {"numTargetFilesAdded": "num_target_files_added", "numTargetFilesRemoved": "num_target_files_removed"}


def _has_map(dtype: "DataType") -> bool:
    from pyspark.sql.types import ArrayType, MapType, StructType

    if isinstance(dtype, MapType):
        return True
    if isinstance(dtype, ArrayType):
        return _has_map(dtype.elementType)
    if isinstance(dtype, StructType):
        return any(_has_map(f.dataType) for f in dtype.fields)
    return False


class NativeTables(Tables):
    """Delta tables through the JVM connector (Spark SQL)."""

    backend = "native"

    def _persistent_catalog(self) -> bool:
        if self.cfg.catalog != "auto":
            return self.cfg.catalog == "spark"
        # Databricks (Unity Catalog / Hive) and enableHiveSupport() sessions keep their
        # tables; a plain local session's in-memory catalog forgets them at exit.
        return self.spark.conf.get("spark.sql.catalogImplementation", "in-memory") != "in-memory"

    def exists(self, table: str) -> bool:
        if self.is_catalog_table(table):
            return bool(self.spark.catalog.tableExists(self.sql_ref(table)))
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, self.location(table)))

    def _require(self, table: str) -> None:
        if not self.exists(table):
            where = self.location(table)
            raise TableError(f"no Delta table at {where}" + (f" (table {table})" if where != table else ""))

    def version(self, table: str) -> int | None:
        if not self.exists(table):
            return None
        return int(self.spark.sql(f"DESCRIBE HISTORY {self.sql_ref(table)} LIMIT 1").first()["version"])

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        self._require(table)
        rows = self.spark.sql(f"DESCRIBE HISTORY {self.sql_ref(table)}" + (f" LIMIT {int(limit)}" if limit else ""))
        return [r.asDict(recursive=True) for r in rows.collect()]

    def read(self, table: str, *, version: int | None = None) -> "DataFrame":
        self._require(table)
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.table(self.sql_ref(table)) if self.is_catalog_table(table) else reader.load(self.location(table))

    def _save(self, writer: Any, table: str) -> None:
        if self.is_catalog_table(table):
            writer.saveAsTable(self.sql_ref(table))
        else:
            writer.save(self.location(table))

    def _differs(self, column: str, dtype: "DataType") -> str:
        # Spark's analyser refuses equality on maps (and on structs/arrays holding one):
        # compare their JSON, which is deterministic for the same map built the same way.
        if _has_map(dtype):
            return f"NOT (to_json(t.`{column}`) <=> to_json(s.`{column}`))"
        return super()._differs(column, dtype)

    def _merge(self, source, table, on, changed, when_matched, when_not_matched) -> dict[str, Any]:
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
        using = view
        if when_matched == "update_changed":
            # Delta rewrites every file holding a matched row, even when the clause's
            # condition is false for all of them: drop the unchanged rows from the source
            # first, so that a rerun with the same data rewrites no file.
            using = f"(SELECT s.* FROM {view} s LEFT ANTI JOIN {self.sql_ref(table)} t ON {on} AND NOT ({changed}))"
        before = self.version(table)
        try:
            row = self._retry(lambda: self.spark.sql(
                f"MERGE INTO {self.sql_ref(table)} t USING {using} s ON {on} {clauses}").first())
        finally:
            self.spark.catalog.dropTempView(view)
        out = {_MERGE_ROW.get(k, k): int(v) for k, v in (row.asDict() if row else {}).items() if v is not None}
        out.update(self._commit_metrics(table, before, "MERGE", _MERGE_HISTORY))
        return out

    def _commit_metrics(self, table: str, before: int | None, operation: str, names: dict[str, str]) -> dict[str, int]:
        """Figures of this session's commit after ``before`` that only the Delta log has."""
        found = {new: 0 for new in names.values()}
        for commit in self.history(table, limit=5):
            if before is not None and commit["version"] <= before:
                break
            if commit.get("operation") == operation:
                metrics = commit.get("operationMetrics") or {}
                found.update({new: int(metrics[old]) for old, new in names.items() if old in metrics})
                break
        return found

    def delete_where(self, table: str, predicate: str) -> dict[str, Any]:
        self._require(table)
        row = self._retry(lambda: self.spark.sql(f"DELETE FROM {self.sql_ref(table)} WHERE {predicate}").first())
        deleted = row.asDict().get("num_affected_rows") if row else None
        return {"table": table, "num_deleted_rows": int(deleted or 0)}
