"""The Delta table interface: read, write, merge, delete, history, version, exists, location.

:class:`Tables` holds what both backends share (naming, write modes, merge planning, commit
retries); :mod:`sparkrag.delta.native` and :mod:`sparkrag.delta.delta_rs` implement the
rest, and :func:`sparkrag.delta.open_tables` picks one per session.

Catalog-style names (``rag.chunks``, ``main.rag.chunks``, ``dev-cat.rag.chunks``) go
through the Spark catalog when the session has a persistent one (Hive metastore, Unity
Catalog); otherwise (delta-rs, a local session's in-memory catalog, which forgets its
tables when the process ends) they resolve to folders under ``TablesConfig.root``.

Example:
    >>> tables = open_tables(spark, TablesConfig())            # doctest: +SKIP
    >>> tables.write(df, "data/tables/chunks", mode="append")  # doctest: +SKIP
    >>> tables.read("data/tables/chunks").count()              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Literal

from sparkrag.config import TablesConfig
from sparkrag.errors import SchemaError, TableError
from sparkrag.schemas import check_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType

__all__ = ["Tables", "Backend", "split_name"]

log = logging.getLogger(__name__)

Backend = Literal["native", "delta-rs"]
# One name part: a plain identifier (hyphens allowed, as Unity Catalog names have them) or
# a backquoted one. One to three parts: table, schema.table, catalog.schema.table.
_PART = r"(?:`[^`]+`|[A-Za-z_][\w-]*)"
_NAME = re.compile(rf"^{_PART}(?:\.{_PART}){{0,2}}$")
_PART_RE = re.compile(_PART)


def split_name(table: str) -> list[str] | None:
    """The parts of a catalog name without quotes, or None when ``table`` is a path."""
    if "/" in table or ":" in table or not _NAME.match(table):
        return None
    return [p.strip("`") for p in _PART_RE.findall(table)]


def _is_commit_conflict(exc: Exception) -> bool:
    """A commit lost to a concurrent writer, worth retrying: delta-rs's CommitFailedError, the
    connector's Concurrent*Exception, and its ProtocolChanged/MetadataChanged exceptions when
    two writers create one table at once."""
    text = str(exc)
    return any(mark in text for mark in ("CommitFailed", "Concurrent", "concurrent update", "ProtocolChanged",
                                         "MetadataChanged", "DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED"))


class Tables(ABC):
    """Read, append, overwrite, merge, delete and inspect Delta tables by path or name.

    Merge and delete results use one set of metric names on both backends:
    ``num_target_rows_inserted/updated/deleted``, ``num_target_files_added/removed``
    (merge) and ``num_deleted_rows`` (delete).
    """

    backend: Backend

    def __init__(self, spark: "SparkSession", cfg: TablesConfig) -> None:
        self.spark, self.cfg = spark, cfg
        self.uses_catalog = self._persistent_catalog()

    def _persistent_catalog(self) -> bool:
        return False

    # -- naming -----------------------------------------------------------------------
    def is_name(self, table: str) -> bool:
        """A catalog-style name (``schema.table``) rather than a path."""
        return split_name(table) is not None

    def is_catalog_table(self, table: str) -> bool:
        """A name the Spark catalog resolves (else: a path, or a name under ``root``)."""
        return self.uses_catalog and self.is_name(table)

    def location(self, table: str) -> str:
        """Where the table is: its path, or its catalog name when the catalog resolves it.

        A relative local path is made absolute here, on the driver: Delta SQL's
        ``delta.`path``` takes absolute paths only, and executors have other working folders.
        """
        parts = split_name(table)
        if parts is None:
            return table if ":" in table or os.path.isabs(table) else os.path.abspath(table)
        if self.uses_catalog:
            return table
        return os.path.abspath(os.path.join(self.cfg.root, *parts))

    def sql_ref(self, table: str) -> str:
        """The table in Spark SQL: a quoted catalog name or ``delta.`path```."""
        if self.is_catalog_table(table):
            return ".".join(f"`{p}`" for p in split_name(table) or [])
        return f"delta.`{self.location(table)}`"

    # -- inspect ----------------------------------------------------------------------
    @abstractmethod
    def exists(self, table: str) -> bool:
        """Whether a Delta table is there."""

    @abstractmethod
    def version(self, table: str) -> int | None:
        """The latest version, or None when the table does not exist."""

    @abstractmethod
    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits newest first: version, timestamp, operation, operationParameters, ..."""

    def schema(self, table: str):
        """The table's Spark schema."""
        return self.read(table).schema

    # -- read / write -----------------------------------------------------------------
    @abstractmethod
    def read(self, table: str, *, version: int | None = None) -> "DataFrame":
        """The table (at ``version``) as a DataFrame.

        Raises:
            TableError: there is no Delta table there.
        """

    @abstractmethod
    def _save(self, writer: Any, table: str) -> None:
        """Run a configured ``DataFrameWriter`` against ``table``."""

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
            check_schema(self.schema(table), df.schema, table=table)
        writer = df.write.format("delta").mode(mode)
        if txn is not None:
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", str(txn[1]))
        if overwrite_schema:
            writer = writer.option("overwriteSchema", "true")
        start = time.perf_counter()
        self._retry(lambda: self._save(writer, table))
        after = self.version(table)
        return {"table": table, "mode": mode, "version_before": before, "version": after,
                "committed": after != before, "seconds": round(time.perf_counter() - start, 3)}

    def _retry(self, action) -> Any:
        for attempt in range(self.cfg.commit_retries + 1):
            try:
                return action()
            except Exception as exc:  # concurrent commits: CommitFailedError / Concurrent*Exception
                if attempt == self.cfg.commit_retries or not _is_commit_conflict(exc):
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
            rows inserted/updated/deleted and files added/removed (names in the class doc).
        """
        missing = [k for k in keys + (compare or []) if k not in source.columns]
        if missing:
            raise SchemaError(f"merge into {table}: source lacks column(s) {missing}")
        if not self.exists(table):
            if when_not_matched == "ignore" or when_matched == "delete":
                return {"table": table, "created": False, "num_target_rows_inserted": 0}
            metrics = self.write(source, table, mode="append")
            return {**metrics, "created": True}
        if when_matched != "delete":
            check_schema(self.schema(table), source.schema, table=table)
        types = {f.name: f.dataType for f in source.schema.fields}
        compare = compare or [c for c in source.columns if c not in keys]
        on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        changed = " OR ".join(f"({self._differs(c, types[c])})" for c in compare) or "FALSE"
        return {"table": table, **self._merge(source, table, on, changed, when_matched, when_not_matched)}

    def _differs(self, column: str, dtype: "DataType") -> str:
        """SQL that is true when target and source values of ``column`` differ (nulls equal)."""
        return f"t.`{column}` IS DISTINCT FROM s.`{column}`"

    @abstractmethod
    def _merge(self, source: "DataFrame", table: str, on: str, changed: str, when_matched: str,
               when_not_matched: str) -> dict[str, Any]:
        """Run the merge; returns its metrics under the common names."""

    @abstractmethod
    def delete_where(self, table: str, predicate: str) -> dict[str, Any]:
        """Delete the rows matching a SQL ``predicate`` (Spark SQL / DataFusion common subset)."""

    def delete_keys(self, keys_df: "DataFrame", table: str, *, keys: list[str]) -> dict[str, Any]:
        """Delete the rows whose ``keys`` appear in ``keys_df`` (a merge with WHEN MATCHED DELETE)."""
        return self.merge(keys_df.select(*keys).distinct(), table, keys=keys,
                          when_matched="delete", when_not_matched="ignore")

    # -- SQL --------------------------------------------------------------------------
    def register_views(self, views: dict[str, str]) -> list[str]:
        """Make each existing table queryable in SQL under a temporary view name."""
        made = []
        for view, table in views.items():
            if not self.exists(table):
                continue
            self.read(table).createOrReplaceTempView(view)
            made.append(view)
        return made
