"""Checkpointed generation and loud failure, through the real answer job (local[2] Spark,
delta-rs tables, embedded Chroma, MiniLM; the extractive answerer and the tiny Llama).

* A job killed with SIGKILL after about half its questions were staged is rerun with the
  same run id: the rerun generates only the rest (counted from the rows' own timestamps and
  from the staging table, not only from the job's report) and the answers table ends equal
  to an uninterrupted run's.
* A run whose rows mostly fail is recorded as failed and raises (the console script exits
  non-zero), with every row kept.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tiny_llama import tiny_llama_path  # noqa: F401  (a session fixture)

from sparkrag.config import RagConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample"
N_QUESTIONS = 24
CHECKPOINT_ROWS = 3  # 8 staged batches: the kill lands between two of them
KILLED_RUN = "ckpt-killed"
STRAIGHT_RUN = "ckpt-straight"
VOLATILE = ("run_id", "created_at", "latency_ms", "contexts")  # differ between two runs (contexts: in the last
# float digits, as questions are embedded in other batches; compared with a tolerance)


def overrides(root: Path) -> list[str]:
    return [f"tables.root={root / 'tables'}", f"chroma.path={root / 'chroma'}", "chroma.collection=ckpt",
            "retrieval.top_k=3", "retrieval.fetch_k=10", f"answer.checkpoint_rows={CHECKPOINT_ROWS}",
            "answer.generate_partitions=1"]


def make_cfg(root: Path, *extra: str) -> RagConfig:
    return load_config(RagConfig, None, [*overrides(root), *extra])


@pytest.fixture(scope="module")
def corpus(spark, tmp_path_factory) -> Path:
    """The first 24 sample questions and the paragraphs they come from, ingested."""
    from sparkrag.pipelines.ingest import run_ingest
    from sparkrag.delta import open_tables

    root = tmp_path_factory.mktemp("checkpoint")
    cfg = make_cfg(root)
    questions = [json.loads(line) for line in (SAMPLE / "questions.jsonl").open(encoding="utf-8")][:N_QUESTIONS]
    wanted = {q["doc_id"] for q in questions}
    docs = [d for d in map(json.loads, (SAMPLE / "documents.jsonl").open(encoding="utf-8")) if d["doc_id"] in wanted]
    tables = open_tables(spark, cfg.tables)
    tables.write(spark.createDataFrame([(d["doc_id"], d["title"], d["text"]) for d in docs],
                                       "doc_id string, title string, text string"), cfg.names.documents)
    tables.write(spark.createDataFrame([(q["question_id"], q["question"]) for q in questions],
                                       "question_id string, question string"), cfg.names.questions)
    run_ingest(spark, cfg)
    return root


def table_rows(root: Path, name: str, run_id: str) -> list[dict[str, Any]]:
    """Rows of ``run_id`` in table rag.<name>, read with delta-rs (no Spark: the job may be
    running; and staged and final rows come back in one representation, UTC timestamps)."""
    from deltalake import DeltaTable

    path = root / "tables" / "rag" / name
    if not DeltaTable.is_deltatable(str(path)):
        return []
    return [r for r in DeltaTable(str(path)).to_pyarrow_table().to_pylist() if r["run_id"] == run_id]


def utc(ts: dt.datetime) -> dt.datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)


def staged_rows(root: Path, run_id: str) -> list[dict[str, Any]]:
    return table_rows(root, "answers_staging", run_id)


def answers(root: Path, run_id: str) -> dict[str, dict[str, Any]]:
    return {r["question_id"]: r for r in table_rows(root, "answers", run_id)}


def start_job(root: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "sparkrag.jobs.answer", "--run-id", KILLED_RUN, "--log-level", "WARNING"]
    for item in overrides(root):
        args += ["--set", item]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    log = (root / "killed-job.log").open("wb")  # a file, not a pipe: a full pipe would stall the job
    # Its own process group, so the JVM it starts can be cleaned up after the driver is killed.
    return subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_after_half_staged(proc: subprocess.Popen, root: Path, timeout: float = 900) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    try:
        while len(staged_rows(root, KILLED_RUN)) < N_QUESTIONS // 2:
            if proc.poll() is not None:
                log = (root / "killed-job.log").read_text(encoding="utf-8", errors="replace")
                pytest.fail(f"the answer job ended (rc {proc.returncode}) before half was staged: {log[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("half the questions were not staged in time")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run, as on a lost node
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its JVM, if still there
        except ProcessLookupError:
            pass
    return staged_rows(root, KILLED_RUN)


@pytest.fixture(scope="module")
def killed_then_rerun(spark, corpus):
    from sparkrag.pipelines.answer import run_answer

    proc = start_job(corpus)
    staged = kill_after_half_staged(proc, corpus)
    killed_at = dt.datetime.now(dt.timezone.utc)
    before_rerun = answers(corpus, KILLED_RUN)
    record = run_answer(spark, make_cfg(corpus, f"answer.run_id={KILLED_RUN}"))
    return staged, killed_at, before_rerun, record


def test_killed_run_resumes_generating_only_the_rest(spark, corpus, killed_then_rerun):
    staged, killed_at, before_rerun, record = killed_then_rerun
    assert N_QUESTIONS // 2 <= len(staged) < N_QUESTIONS  # killed mid-run, with half or more staged
    assert before_rerun == {}  # nothing reached the answers table before the kill
    assert len({r["question_id"] for r in staged}) == len(staged)  # no question staged twice
    assert len({r["batch"] for r in staged}) >= 2  # committed batch by batch, not at the end
    assert record["status"] == "succeeded" and record["run_id"] == KILLED_RUN
    assert record["counts"]["reused_staged"] == len(staged)
    assert record["counts"]["generated"] == N_QUESTIONS - len(staged)  # the job's own count...
    final = answers(corpus, KILLED_RUN)
    assert len(final) == N_QUESTIONS
    by_staged = {r["question_id"]: r for r in staged}
    kept = [q for q, r in final.items() if q in by_staged and r["created_at"] == by_staged[q]["created_at"]]
    fresh = [q for q, r in final.items() if utc(r["created_at"]) > killed_at]
    # ... and from the rows themselves: staged rows kept as they were, the rest made after the kill
    assert sorted(kept) == sorted(by_staged) and len(fresh) == N_QUESTIONS - len(staged)
    for q in kept:
        assert final[q]["answer"] == by_staged[q]["answer"] and final[q]["contexts"] == by_staged[q]["contexts"]
    assert staged_rows(corpus, KILLED_RUN) == []  # a finished run leaves nothing staged


def test_resumed_answers_equal_an_uninterrupted_run(spark, corpus, killed_then_rerun):
    from sparkrag.pipelines.answer import run_answer

    record = run_answer(spark, make_cfg(corpus, f"answer.run_id={STRAIGHT_RUN}"))
    assert record["counts"]["generated"] == N_QUESTIONS and record["counts"]["staged_batches"] >= 4
    resumed, straight = answers(corpus, KILLED_RUN), answers(corpus, STRAIGHT_RUN)
    assert set(resumed) == set(straight)
    strip = lambda row: {k: v for k, v in row.items() if k not in VOLATILE}  # noqa: E731
    for qid in straight:
        assert strip(resumed[qid]) == strip(straight[qid]), qid
        got, want = resumed[qid]["contexts"], straight[qid]["contexts"]
        assert [c["chunk_id"] for c in got] == [c["chunk_id"] for c in want], qid
        assert [c["distance"] for c in got] == pytest.approx([c["distance"] for c in want], abs=1e-5), qid
    assert all(r["error"] is None and r["answer"] for r in straight.values())


def test_rows_mostly_failing_fail_the_run_and_are_kept(spark, corpus, tiny_llama_path):
    from sparkrag.jobs.answer import main
    from sparkrag.delta import open_tables

    run_id = "ckpt-failing"
    # Prompts fit the packing budget (4096 - 2040) but not the model's 2,048 positions once
    # 2,040 new tokens are added: the generator refuses every row (as an OOM on every row would).
    argv = ["--generator", "llm", "--model", tiny_llama_path, "--run-id", run_id,
            "--set", "generator.max_new_tokens=2040", "--set", "generator.device=cpu"]
    for item in overrides(corpus):
        argv += ["--set", item]
    # The job ends with its one-line error and a non-zero status (jobs/_common.entry_point).
    with pytest.raises(SystemExit, match=r"RunFailedError: 24 of 24 answers .* above answer.max_error_rate 5\.0%"):
        main(argv, spark=spark)
    rows = answers(corpus, run_id)
    assert len(rows) == N_QUESTIONS  # kept
    assert all("max_position_embeddings 2048" in r["error"] and r["answer"] is None for r in rows.values())
    cfg = make_cfg(corpus)
    runs = open_tables(spark, cfg.tables).read(cfg.names.runs)
    [failed] = [r.asDict() for r in runs.where(runs.run_id == run_id).collect()]
    assert failed["status"] == "failed" and "answer.max_error_rate" in failed["error"]
    assert failed["counts"]["errors"] == N_QUESTIONS and failed["metrics"]["error_rate"] == 1.0
    # The same rows under a tolerant limit: a succeeded run.
    record = main(argv + ["--set", "answer.max_error_rate=1.0", "--resume"], spark=spark)
    assert record == 0
