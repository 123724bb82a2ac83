"""Nothing corpus-sized reaches the driver (issue #13): the jobs pass with ``spark.driver.maxResultSize=1m``.

The corpus (all 250 sample paragraphs in 32-token chunks, with their 384-float vectors)
is ~3 MB, three times the limit: a control process that collects the chunks table under
the same limit fails with Spark's maxResultSize error. Ingest, answer (hybrid, replicated and
partitioned; exact) and the evaluation's mode comparison then run as job processes under
that limit and must succeed. Real Spark (local[2]), Delta, Chroma (2 shards), BM25, MiniLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparkrag.config import RagConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [json.loads(line) for line in (ROOT / "resources/sample/documents.jsonl").read_text().splitlines()]
QUESTIONS = [json.loads(line) for line in (ROOT / "resources/sample/questions.jsonl").read_text().splitlines()]
LIMIT = "1m"  # Spark's smallest


def settings(root: Path) -> dict:
    return {"spark": {"master": "local[2]", "shuffle_partitions": 4,
                      "conf": {"spark.ui.enabled": "false", "spark.driver.maxResultSize": LIMIT}},
            "tables": {"root": str(root / "tables")},
            "chroma": {"path": str(root / "chroma"), "collection": "small_driver", "shards": 2},
            "chunking": {"max_tokens": 32, "overlap_tokens": 4}, "retrieval": {"mode": "hybrid", "top_k": 4}}


def run_job(root: Path, config: Path, job: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    return subprocess.run([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--config", str(config), *args,
                           "--log-level", "WARNING"], cwd=root, env=env, capture_output=True, text=True, timeout=1500)


CONTROL = """
import sys
from sparkrag.config import RagConfig, load_config
from sparkrag.delta import open_tables
from sparkrag.spark import get_spark
from pyspark.sql import functions as F
cfg = load_config(RagConfig, sys.argv[1], [])
spark = get_spark(cfg.spark)
chunks = open_tables(spark, cfg.tables).read(cfg.names.chunks)
size = chunks.select((F.length("text") + F.size("embedding") * 4).alias("b")).agg(F.sum("b")).first()[0]
print("corpus-bytes", size, flush=True)
chunks.toPandas()  # what the answer job's exact search did before issue #13
print("collected", flush=True)
"""


@pytest.fixture(scope="module")
def small_driver(spark, tmp_path_factory):
    import yaml

    from sparkrag.delta import open_tables

    root = tmp_path_factory.mktemp("small_driver")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(settings(root)), encoding="utf-8")
    cfg = load_config(RagConfig, config, [])
    tables = open_tables(spark, cfg.tables)
    tables.write(spark.createDataFrame([(d["doc_id"], d["title"], d["text"]) for d in DOCS],
                                       "doc_id string, title string, text string"), cfg.names.documents)
    tables.write(spark.createDataFrame([(q["question_id"], q["question"], q["doc_id"]) for q in QUESTIONS],
                                       "question_id string, question string, doc_id string"), cfg.names.questions)
    ingest = run_job(root, config, "ingest")
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    return root, config


def test_the_corpus_does_not_fit_under_the_limit(small_driver):
    root, config = small_driver
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    control = subprocess.run([sys.executable, "-c", CONTROL, str(config)], cwd=root, env=env, capture_output=True,
                             text=True, timeout=600)
    size = int(next(line.split()[1] for line in control.stdout.splitlines() if line.startswith("corpus-bytes")))
    assert size > 2 * 2**20  # more than twice the limit
    assert control.returncode != 0 and "collected" not in control.stdout
    assert "maxResultSize" in control.stderr


@pytest.mark.parametrize("args", [
    ("--run-id", "replicated", "--set", "retrieval.shard_access=replicated"),
    ("--run-id", "partitioned", "--set", "retrieval.shard_access=partitioned"),
    ("--run-id", "exact", "--vector-search", "exact"),
], ids=["replicated", "partitioned", "exact"])
def test_answer_runs_under_the_limit(small_driver, args):
    root, config = small_driver
    answer = run_job(root, config, "answer", *args)
    assert answer.returncode == 0, answer.stderr[-3000:]


def test_mode_comparison_runs_under_the_limit(small_driver):
    root, config = small_driver
    evaluate = run_job(root, config, "evaluate", "--run-id", "replicated", "--compare-modes", "dense,hybrid",
                       "--gold-answers-column", "", "--impossible-column", "", "--ann-sample", "20")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    metrics = json.loads(evaluate.stdout[evaluate.stdout.index("{"):])["metrics"]
    assert metrics["hybrid_recall@5"] > 0.5 and metrics["dense_recall@5"] > 0.5 and metrics["ann_recall@10"] > 0.9
