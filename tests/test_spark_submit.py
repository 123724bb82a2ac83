"""`spark-submit jobs/ingest.py` and `jobs/answer.py` work exactly as the README shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deltalake import DeltaTable

from sparkrag.config import TablesConfig
from sparkrag.delta import open_tables

ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def _rows(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


def test_spark_submit_runs_ingest_then_answer(spark, tmp_path):
    root = tmp_path / "tables"
    tables = open_tables(spark, TablesConfig(root=str(root)))
    docs = _rows(ROOT / "resources" / "sample" / "documents.jsonl", 6)
    questions = [q for q in _rows(ROOT / "resources" / "sample" / "questions.jsonl", 54)
                 if q["doc_id"] in {d["doc_id"] for d in docs}][:3]
    tables.write(spark.createDataFrame(docs), "rag.documents")
    tables.write(spark.createDataFrame(questions).drop("answers"), "rag.questions")
    config = tmp_path / "local.yaml"
    config.write_text(f"tables:\n  root: {root}\nchroma:\n  path: {tmp_path / 'chroma'}\n", encoding="utf-8")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    common = ["--master", "local[1]", "--conf", "spark.ui.enabled=false", "--driver-memory", "1g"]
    for job, args in (("ingest", ["--documents", "rag.documents"]), ("answer", ["--questions", "rag.questions"])):
        out = subprocess.run([str(SPARK_SUBMIT), *common, str(ROOT / "jobs" / f"{job}.py"), "--config", str(config),
                              *args, "--log-level", "WARNING"],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-4000:]
        summary = json.loads(out.stdout[out.stdout.index("{"):])
        assert summary["status"] == "succeeded"
    chunks = DeltaTable(str(root / "rag" / "chunks")).to_pyarrow_table()
    assert set(chunks.column("doc_id").to_pylist()) == {d["doc_id"] for d in docs}
    answers = DeltaTable(str(root / "rag" / "answers")).to_pyarrow_table().to_pylist()
    assert sorted(a["question_id"] for a in answers) == sorted(q["question_id"] for q in questions)
    assert all(a["error"] is None and a["contexts"] for a in answers)
    runs = DeltaTable(str(root / "rag" / "runs")).to_pyarrow_table().to_pylist()
    assert sorted(r["job"] for r in runs) == ["answer", "ingest"]
