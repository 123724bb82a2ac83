"""Run records and driver-side progress of long Spark stages."""

import logging
import time

from sparkrag.config import RagConfig
from sparkrag.pipelines.runs import RunRecorder, _ProgressReporter, new_run_id


def test_progress_reporter_logs_tasks_done_while_a_stage_runs(spark, caplog):
    def slow(rows):
        time.sleep(1.0)
        return rows

    caplog.set_level(logging.INFO, logger="sparkrag.pipelines.runs")
    reporter = _ProgressReporter(spark, "[r] embed", every=0.3)
    try:
        spark.sparkContext.parallelize(range(6), 6).mapPartitions(slow).count()
    finally:
        reporter.stop()
    lines = [r.getMessage() for r in caplog.records if "tasks done" in r.getMessage()]
    assert lines, "no progress line was logged during a 3 s job"
    assert all(line.startswith("[r] embed: ") and "/6 tasks done" in line for line in lines)


def test_run_record_carries_lineage_counts_and_stage_seconds():
    rec = RunRecorder("ingest", RagConfig(), new_run_id("ingest"), embedding_model="m")
    with rec.stage("plan"):
        rec.counts["documents_read"] = 3
    row = rec.record("succeeded")
    assert row["run_id"].startswith("ingest-") and row["job"] == "ingest" and row["status"] == "succeeded"
    assert row["counts"] == {"documents_read": 3} and set(row["stage_seconds"]) == {"plan"}
    assert row["embedding_model"] == "m" and row["finished_at"] >= row["started_at"]
    assert '"chunking"' in row["config_json"]
