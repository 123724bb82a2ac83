"""Run records and rejects: the lineage every job writes to the shared runs/rejects tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sparkrag import __version__
from sparkrag.config import RagConfig, to_dict
from sparkrag.redact import redact_config, redact_text, secret_values
from sparkrag.schemas import REJECTS_SCHEMA, RUNS_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from sparkrag.delta import Tables

__all__ = ["new_run_id", "RunRecorder", "rejects_frame", "write_run_record"]

log = logging.getLogger(__name__)


def new_run_id(job: str) -> str:
    """A sortable, unique run id: ``<job>-<UTC timestamp>-<random>``."""
    return f"{job}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class RunRecorder:
    """Collects counts, stage timings and metrics of one run; written once at the end."""

    job: str
    cfg: RagConfig
    run_id: str
    model_id: str | None = None
    embedding_model: str | None = None
    started_at: dt.datetime = field(default_factory=utcnow)
    counts: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    input_versions: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    # Called as each stage starts, e.g. the run lock's check: a run that lost its lock stops.
    before_stage: Callable[[], None] | None = None

    @contextlib.contextmanager
    def stage(self, name: str, spark: Any = None) -> Iterator[None]:
        """Time a stage; with ``spark``, log Spark task progress every 15 s while it runs."""
        if self.before_stage is not None:
            self.before_stage()
        start = time.perf_counter()
        log.info("[%s] %s ...", self.run_id, name)
        reporter = _ProgressReporter(spark, f"[{self.run_id}] {name}") if spark is not None else None
        try:
            yield
        finally:
            if reporter is not None:
                reporter.stop()
            self.stage_seconds[name] = round(self.stage_seconds.get(name, 0.0) + time.perf_counter() - start, 3)
            log.info("[%s] %s done in %.1f s", self.run_id, name, self.stage_seconds[name])

    def record(self, status: str, error: str | None = None) -> dict[str, Any]:
        """The runs-table row (RUNS_SCHEMA) for this run."""
        return {
            "run_id": self.run_id,
            "job": self.job,
            "status": status,
            "started_at": self.started_at,
            "finished_at": utcnow(),
            "counts": {k: int(v) for k, v in self.counts.items()},
            "stage_seconds": {k: float(v) for k, v in self.stage_seconds.items()},
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "input_versions": {k: int(v) for k, v in self.input_versions.items() if v is not None},
            "outputs": dict(self.outputs),
            "config_json": json.dumps(redact_config(to_dict(self.cfg)), default=str, sort_keys=True),
            "model_id": self.model_id,
            "embedding_model": self.embedding_model,
            "sparkrag_version": __version__,
            "error": redact_text(error, secret_values(to_dict(self.cfg))),
            "created_at": utcnow(),
        }


class _ProgressReporter(threading.Thread):
    """Logs tasks done / total and the task rate of the running Spark stages, on the driver."""

    def __init__(self, spark: Any, label: str, every: float = 15.0) -> None:
        super().__init__(daemon=True)
        self.tracker, self.label, self.every = spark.sparkContext.statusTracker(), label, every
        self.done = threading.Event()
        self.start_time = time.perf_counter()
        self.start()

    def run(self) -> None:
        while not self.done.wait(self.every):
            infos = [self.tracker.getStageInfo(s) for s in self.tracker.getActiveStageIds()]
            infos = [i for i in infos if i is not None]
            if not infos:
                continue
            total = sum(i.numTasks for i in infos)
            finished = sum(i.numCompletedTasks for i in infos)
            elapsed = time.perf_counter() - self.start_time
            log.info("%s: %d/%d tasks done, %d running (%.0f s elapsed)", self.label, finished, total,
                     sum(i.numActiveTasks for i in infos), elapsed)

    def stop(self) -> None:
        self.done.set()


def write_run_record(tables: "Tables", runs_table: str, record: dict[str, Any]) -> None:
    """Append one row to the runs table."""
    tables.write(tables.spark.createDataFrame([record], RUNS_SCHEMA), runs_table, mode="append")


def rejects_frame(df: "DataFrame", *, run_id: str, job: str, source_table: str, key_col: str | None,
                  reason_col: str = "_reason", column_col: str = "_column") -> "DataFrame":
    """Shape bad input rows (with ``_reason``/``_column`` columns) as REJECTS_SCHEMA rows."""
    from pyspark.sql import functions as F

    payload = [c for c in df.columns if c not in (reason_col, column_col)]
    return df.select(
        F.lit(run_id).alias("run_id"),
        F.lit(job).alias("job"),
        F.lit(source_table).alias("source_table"),
        (F.col(key_col).cast("string") if key_col else F.lit(None).cast("string")).alias("row_key"),
        F.col(column_col).alias("column"),
        F.col(reason_col).alias("reason"),
        F.substring(F.to_json(F.struct(*[F.col(f"`{c}`") for c in payload])), 1, 2000).alias("row_json"),
        F.current_timestamp().alias("created_at"),
    ).select(*[F.col(f.name).cast(f.dataType) for f in REJECTS_SCHEMA.fields])
