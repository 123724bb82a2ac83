"""The driver that tests/test_multinode.py spark-submits to the standalone cluster.

Usage: ``spark-submit tests/multinode_driver.py PLAN.json`` with the driver's working
directory on the shared folder. The plan names the sample files, the input tables and
the job command lines; the driver

1. probes the cluster: which executors run tasks, whether they see a file in the driver's
   ``tempfile.mkdtemp()`` (they must not) and one in the shared folder (they must), and
   what parallelism :func:`sparkrag.spark.get_spark` left;
2. writes the sample documents and questions into Delta tables (on whatever backend the
   stack has), then runs each job's ``run(argv)`` as ``spark-submit jobs/<job>.py`` would,
   in one Spark application (executors and their cached models are reused across jobs);
3. writes the probe and every job's record to ``result`` (JSON) as it goes.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from typing import Any


def probe(spark: Any, shared: str) -> dict[str, Any]:
    """What the tasks see of the driver's /tmp and of the shared folder."""
    private = os.path.join(tempfile.mkdtemp(prefix="sparkrag-probe-"), "driver-only.txt")
    public = os.path.join(shared, "probe-shared.txt")
    for path in (private, public):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("x")

    def look(_index, _rows):
        # An executor's working directory is <worker work dir>/<app id>/<executor id>.
        yield os.getcwd(), os.path.exists(private), os.path.exists(public)

    sc = spark.sparkContext
    seen = sc.parallelize(range(8), 8).mapPartitionsWithIndex(look).collect()
    return {
        "master": sc.master,
        "task_dirs": sorted({s[0] for s in seen}),
        "tasks_saw_driver_tmp": any(s[1] for s in seen),
        "tasks_saw_shared": all(s[2] for s in seen),
        "driver_saw_own_tmp": os.path.exists(private),
        "default_parallelism_conf": sc.getConf().get("spark.default.parallelism", None),
        "default_parallelism": sc.defaultParallelism,
    }


def write_inputs(spark: Any, plan: dict[str, Any]) -> None:
    """The sample's first documents and their questions, as Delta tables (paths from the plan)."""
    from sparkrag.config import TablesConfig
    from sparkrag.delta import open_tables

    tables = open_tables(spark, TablesConfig(**plan.get("tables", {})))
    for key in ("documents", "questions"):
        with open(plan[f"{key}_file"], encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        tables.write(spark.createDataFrame(rows), plan[f"{key}_table"], mode="overwrite")


def main(plan_path: str) -> None:
    from sparkrag.config import SparkConfig
    from sparkrag.spark import get_spark

    with open(plan_path, encoding="utf-8") as fh:
        plan = json.load(fh)
    result: dict[str, Any] = {"jobs": []}

    def save() -> None:
        with open(plan["result"], "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, default=str)

    spark = get_spark(SparkConfig())  # what every job's main() does under spark-submit
    result["probe"] = probe(spark, plan["shared"])
    save()
    write_inputs(spark, plan)
    for job, argv in plan["jobs"]:
        record = importlib.import_module(f"sparkrag.jobs.{job}").run(argv)
        result["jobs"].append({"job": job, "record": record})
        save()
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
