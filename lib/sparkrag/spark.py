"""Get the SparkSession: the active one (Databricks, spark-submit) or a local one with sane defaults."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from sparkrag.config import SparkConfig

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["get_spark", "is_local_master", "task_gpu_index", "ships_copies", "ship_archive", "collect_arrow",
           "map_in_pandas"]

log = logging.getLogger(__name__)

# Settings every local session gets; a cluster's own settings are never overridden.
_LOCAL_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    # Spark's default INT96 timestamps are misread by delta-rs (1500-01-01 -> 2084-07-20).
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # Proleptic Gregorian dates as they are (Spark 4's default; Spark 3.5 refuses to write
    # timestamps before 1900 unless told), as delta-rs and every Spark 3+ reader expect.
    "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
    "spark.sql.parquet.datetimeRebaseModeInRead": "CORRECTED",
    # Reusing Python workers keeps models cached per worker (off: 8-14 s reload per task).
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
}
# Local mode only: the driver, block manager and (through SPARK_LOCAL_IP) the UI listen on
# loopback, not on every interface (issue #17). A cluster master is left to the cluster.
_LOOPBACK = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


def get_spark(cfg: SparkConfig | None = None) -> "SparkSession":
    """Return the active SparkSession, or build a local one from ``cfg``.

    A session that already exists (Databricks notebooks and jobs, ``spark-submit``) is
    returned untouched apart from the Arrow batch size. Otherwise a local session is
    built whose workers run this interpreter (without ``PYSPARK_PYTHON`` they may pick a
    python that lacks pyarrow), with Arrow on, UTC session time and micros timestamps.

    Example:
        >>> spark = get_spark(SparkConfig(master="local[2]"))
    """
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        active.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_size))
        return active
    # Setting the worker interpreter is process state, done once here on the driver
    # (lib/ reads no environment; it only writes what Spark's launcher reads).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkConf, SparkContext

    # Under spark-submit the JVM is already up (its PythonRunner hands the gateway port
    # over): connect first so that SparkConf holds the launcher's --master/--conf, which
    # win; our defaults only fill what it left unset.
    launcher_jvm = bool(os.environ.get("PYSPARK_GATEWAY_PORT"))
    if not launcher_jvm and is_local_master(cfg.master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # read by the JVM we are about to start
    if launcher_jvm:
        SparkContext._ensure_initialized()
    launched = SparkConf()
    builder = SparkSession.builder
    if not launched.contains("spark.app.name"):
        builder = builder.appName(cfg.app_name)
    if not launched.contains("spark.master"):
        builder = builder.master(cfg.master)
    settings = dict(_LOCAL_DEFAULTS)
    settings["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions)
    if is_local_master(launched.get("spark.master", cfg.master)):
        settings.update(_LOOPBACK)
        if launcher_jvm and "SPARK_LOCAL_IP" not in os.environ:
            settings["spark.ui.enabled"] = "false"  # its JVM started without SPARK_LOCAL_IP: the UI would bind *
        # On a cluster Spark's own default (the executors' total cores) is right; a laptop's
        # count would leave most of the cluster idle in every RDD stage (issue 12).
        settings["spark.default.parallelism"] = str(cfg.shuffle_partitions)
    settings["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(cfg.arrow_batch_size)
    settings.update(cfg.conf)
    for key, value in settings.items():
        if not launched.contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("started Spark %s (%s)", spark.version, spark.sparkContext.master)
    return spark


def is_local_master(master: str) -> bool:
    """True for ``local``, ``local[N]``, ``local[*]`` and ``local-cluster[...]`` masters (one machine)."""
    return master.startswith("local")


def task_gpu_index() -> int | None:
    """The GPU Spark assigned to the running task, if any (``spark.task.resource.gpu.amount``)."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a hard dependency
        return None
    ctx = TaskContext.get()
    if ctx is None:
        return None
    gpus = ctx.resources().get("gpu")
    if gpus is None or not gpus.addresses:
        return None
    return int(gpus.addresses[0])


def ships_copies(spark: "SparkSession", access: str) -> bool:
    """Whether executors get copies of local index folders (``answer.chroma_access``).

    ``shared`` opens the paths in place (local mode, a shared disk), ``snapshot`` ships
    copies, ``auto`` is shared on local masters and snapshot elsewhere.
    """
    if access == "auto":
        try:
            return not is_local_master(spark.sparkContext.master)
        except Exception:  # Spark Connect has no SparkContext: executors are elsewhere
            return True
    return access == "snapshot"


def ship_archive(spark: "SparkSession", archive: str) -> None:
    """Send a .tar.gz to every executor, unpacked under its name (``SparkFiles.get(name)``)."""
    try:
        context = spark.sparkContext
    except Exception:  # Spark Connect (Databricks serverless / shared clusters) has no SparkContext
        context = None
    if context is not None:
        context.addArchive(archive)
    else:
        spark.addArtifacts(archive, archive=True)


# -- what differs between Spark 3.5 and 4.x: detected by capability, not by version -----

def collect_arrow(df: "DataFrame") -> "pa.Table":
    """``df`` on the driver as a pyarrow Table (``DataFrame.toArrow`` is Spark 4.0+).

    Meant for results bounded by design (per-shard summaries, small lookups). One caller
    still collects the corpus through it: ``index.lexical._chunk_rows``, which builds the
    BM25 index on the driver (issue #13: a sharded lexical index built in Spark tasks).
    """
    if hasattr(df, "toArrow"):
        return df.toArrow()
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    # Spark 3.x: the Arrow collect behind toPandas(), without the pandas detour.
    batches = df._collect_as_arrow()
    return pa.Table.from_batches(batches, schema=None if batches else to_arrow_schema(df.schema))


def map_in_pandas(df: "DataFrame", fn: Callable[..., Any], schema: Any, *, profile: Any = None) -> "DataFrame":
    """``df.mapInPandas(fn, schema)`` in a stage with ``profile`` (a ResourceProfile) when given.

    ``mapInPandas(profile=)`` is Spark 4.0+. Without it (Spark 3.5: Databricks 15.4/16.4 LTS)
    the tasks get the cluster-wide ``spark.task.resource.gpu.amount`` instead, which is how
    GPU job clusters on those runtimes are configured.
    """
    if profile is None:
        return df.mapInPandas(fn, schema)
    if "profile" not in inspect.signature(df.mapInPandas).parameters:
        log.warning("this Spark (%s) cannot give one stage its own ResourceProfile: generation tasks use the "
                    "cluster's spark.task.resource.gpu.amount", df.sparkSession.version)
        return df.mapInPandas(fn, schema)
    return df.mapInPandas(fn, schema, profile=profile)
