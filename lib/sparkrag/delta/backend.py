"""Which Delta backend a session gets, chosen once: the JVM connector or delta-rs.

- ``native`` (:mod:`sparkrag.delta.native`): the Delta Lake connector is in the JVM
  (Databricks; ``--packages io.delta:delta-spark_2.13:<v>``; our ``STACK=*-native``).
  Merges and deletes are Delta SQL.
- ``delta-rs`` (:mod:`sparkrag.delta.delta_rs`): the ``deltalake`` package, for a Spark 4
  without the connector. ``format("delta")`` is served by :mod:`sparkrag.delta.source`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from sparkrag.config import TablesConfig
from sparkrag.delta.tables import Backend
from sparkrag.errors import TableError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from sparkrag.delta.tables import Tables

__all__ = ["open_tables", "detect_backend"]

log = logging.getLogger(__name__)


def _has_python_data_sources(spark: "SparkSession") -> bool:
    return hasattr(spark, "dataSource")  # Spark 4.0+


def _has_delta_connector(spark: "SparkSession") -> bool:
    """Whether ``format("delta")`` resolves to a JVM data source (without registering ours)."""
    probe = f"/nonexistent/sparkrag-delta-probe-{os.getpid()}"
    try:
        spark.read.format("delta").load(probe)
    except Exception as exc:  # AnalysisException either way; only its kind tells them apart
        text = str(exc)
        return not ("DATA_SOURCE_NOT_FOUND" in text or "Failed to find data source" in text)
    return True


def _python_delta_source_registered(spark: "SparkSession") -> bool:
    """Whether this session already has a Python data source named ``delta`` (ours)."""
    try:
        return bool(spark._jsparkSession.sessionState().dataSourceManager().dataSourceExists("delta"))
    except Exception:  # a Spark without this JVM API (4.0-4.2 have it): assume ours is not registered
        return False


def detect_backend(spark: "SparkSession", preference: str = "auto") -> Backend:
    """Pick the Delta backend and make ``format("delta")`` work on it.

    The JVM connector is probed before anything of delta-rs is imported, so the native
    path never loads ``deltalake`` or the Python data source. On Spark 4 without the
    connector, sparkrag's delta-rs data source is registered under the name ``delta``
    (once per session). A Spark without Python data sources (3.5) must have the connector.

    Raises:
        TableError: the backend asked for cannot work on this Spark.
    """
    if preference == "native":
        return "native"
    python_sources = _has_python_data_sources(spark)
    registered = python_sources and _python_delta_source_registered(spark)
    if not registered and _has_delta_connector(spark):
        if preference == "delta-rs":
            raise TableError("tables.backend=delta-rs, but this Spark has the native Delta connector, which "
                             "owns format('delta'): use tables.backend=native or auto")
        return "native"
    if not python_sources:
        raise TableError(f"Spark {spark.version} has no Delta Lake connector and no Python data sources "
                         "(Spark 4.0+) for delta-rs: add io.delta:delta-spark_2.12:3.x (spark.jars.packages) "
                         "or use pyspark 4")
    if not registered:
        from sparkrag.delta.source import DeltaRsDataSource

        spark.dataSource.register(DeltaRsDataSource)
    return "delta-rs"


def open_tables(spark: "SparkSession", cfg: TablesConfig | None = None) -> "Tables":
    """The Delta I/O layer for this session (backend detected once)."""
    cfg = cfg or TablesConfig()
    backend = detect_backend(spark, cfg.backend)
    if backend == "native":
        from sparkrag.delta.native import NativeTables as impl
    else:
        from sparkrag.delta.delta_rs import DeltaRsTables as impl  # type: ignore[assignment]
    tables = impl(spark, cfg)
    log.info("Delta backend: %s (catalog names %s)", backend,
             "in the Spark catalog" if tables.uses_catalog else f"under {cfg.root}")
    return tables
