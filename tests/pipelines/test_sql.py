"""sparkrag-sql and every shipped query, on real Delta tables written through the tables layer.

The fixture writes two answer runs (r1, then r2 which failed once and was resumed), a failed
run between them (r1b), ingest runs and rejects, with the project's schemas (one answers
row per question and run, as the answer job's merge leaves them). Each shipped
.sql file is run through the command line (JSON output parsed back) and its answer checked
against values worked out by hand from the fixture.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from sparkrag.config import RagConfig, load_config
from sparkrag.errors import ConfigError, TableError
from sparkrag.jobs.sql import main
from sparkrag.pipelines.sql import (
    bind_parameters,
    declared_defaults,
    find_sql_file,
    format_rows,
    query_parameters,
    run_sql,
)
from sparkrag.schemas import ANSWERS_SCHEMA, REJECTS_SCHEMA, RUNS_SCHEMA
from sparkrag.delta import open_tables

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "resources" / "sql"
UTC = dt.timezone.utc


def _t(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, minute, tzinfo=UTC)


def _local(when: dt.datetime) -> dt.datetime:
    """How collect() returns a timestamp: naive, in this process's local time zone."""
    return dt.datetime.fromtimestamp(when.timestamp())


def _ctx(doc: str, rank: int, distance: float, chunk: int = 0) -> tuple:
    return (f"{doc}-c{chunk}", doc, f"Title {doc}", f"text of {doc} chunk {chunk}", distance, rank, None,
            {"dense": rank}, None)


def _answer(run: str, qid: str, at: dt.datetime, *, answer: str | None = None, abstained: bool | None = False,
            contexts: list | None = None, latency: float | None = None, tokens: tuple = (None, None),
            error: str | None = None) -> tuple:
    return (qid, f"question {qid}?", None, answer, abstained if error is None else None,
            contexts, None, None, "tiny-chatqa", "minilm", "sparkrag", "dense",
            tokens[0], tokens[1], latency, error, run, at)


def _answers() -> list[tuple]:
    r1, r1b, r2 = _t(1, 10), _t(1, 12), _t(2, 10)
    sorry = "Sorry. I cannot find the answer based on the context."
    return [
        # r1: q2 abstains, q4 fails in retrieval (no contexts).
        _answer("r1", "q1", r1, answer="Paris", contexts=[_ctx("d1", 1, 0.1), _ctx("d2", 2, 0.4)], latency=10.0, tokens=(50, 5)),
        _answer("r1", "q2", r1, answer=sorry, abstained=True, contexts=[_ctx("d2", 1, 0.7)], latency=20.0, tokens=(60, 10)),
        _answer("r1", "q3", r1, answer="1969", contexts=[_ctx("d1", 1, 0.2)], latency=30.0, tokens=(70, 3)),
        _answer("r1", "q4", r1, error="VectorStoreError: connection refused"),
        _answer("r1", "q6", r1, answer="red", contexts=[_ctx("d2", 1, 0.3)], latency=40.0, tokens=(40, 2)),
        _answer("r1", "q7", r1, answer="seven", contexts=[_ctx("d3", 1, 0.3)], latency=50.0, tokens=(40, 2)),
        # r1b: a run that failed after one answer; never "the previous run".
        _answer("r1b", "q1", r1b, answer="London", contexts=[_ctx("d9", 1, 0.5)], latency=5.0, tokens=(10, 1)),
        # r2: q4 failed in the first attempt; --resume replaced its row at 10:30.
        # q5 fails in retrieval, q8 in generation (it has contexts).
        _answer("r2", "q1", r2, answer="Paris", contexts=[_ctx("d1", 1, 0.1)], latency=100.0, tokens=(51, 5)),
        _answer("r2", "q2", r2, answer="Blue", contexts=[_ctx("d2", 1, 0.2), _ctx("d3", 2, 0.25)], latency=200.0, tokens=(52, 6)),
        _answer("r2", "q3", r2, answer=sorry, abstained=True, contexts=[_ctx("d1", 1, 0.6), _ctx("d1", 2, 0.65, chunk=1)],
                latency=300.0, tokens=(53, 7)),
        _answer("r2", "q4", _t(2, 10, 30), answer="42", contexts=[_ctx("d3", 1, 0.15)], latency=400.0, tokens=(54, 8)),
        _answer("r2", "q5", r2, error="timeout after 60 s"),
        _answer("r2", "q6", r2, answer="crimson", contexts=[_ctx("d2", 1, 0.3)], latency=500.0, tokens=(55, 9)),
        _answer("r2", "q7", r2, answer=sorry, abstained=True, contexts=[_ctx("d1", 1, 0.8)], latency=600.0, tokens=(56, 10)),
        _answer("r2", "q8", r2, contexts=[_ctx("d4", 1, 0.2)], error="CUDA out of memory"),
    ]


def _run(run: str, job: str, status: str, start: dt.datetime, minutes: int) -> tuple:
    end = start + dt.timedelta(minutes=minutes)
    return (run, job, status, start, end, {"questions": 1}, {"total": 60.0 * minutes}, None, None, None,
            "{}", "tiny-chatqa", "minilm", "0.1.0", None if status == "succeeded" else "boom", end)


def _runs() -> list[tuple]:
    return [
        _run("ing1", "ingest", "succeeded", _t(1, 9), 5),
        _run("r1", "answer", "succeeded", _t(1, 10), 3),
        _run("r1b", "answer", "failed", _t(1, 12), 1),
        _run("r2", "answer", "failed", _t(2, 10), 2),  # the first attempt of r2...
        _run("r2", "answer", "succeeded", _t(2, 10, 29), 4),  # ...and its --resume
        _run("ing2", "ingest", "succeeded", _t(3, 9), 5),  # newest run of all, but not an answer run
    ]


def _rejects() -> list[tuple]:
    return [
        ("ing1", "ingest", "rag.documents", "bad1", "text", "empty text", '{"doc_id": "bad1", "text": ""}', _t(1, 9, 1)),
        ("ing2", "ingest", "rag.documents", "huge", "text", "longer than ingest.max_document_chars (2000000)",
         '{"doc_id": "huge", "text": "' + "x" * 500 + '"}', _t(3, 9, 1)),
        ("ing2", "ingest", "rag.documents", None, "doc_id", "missing document id", '{"text": "orphan"}', _t(3, 9, 2)),
        ("r2", "answer", "rag.questions", "q9", "question", "empty question", '{"question_id": "q9"}', _t(2, 10, 1)),
    ]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> RagConfig:
    return load_config(RagConfig, None, [f"tables.root={tmp_path_factory.mktemp('tables')}"])


@pytest.fixture(scope="module")
def tables(spark, cfg):
    tables = open_tables(spark, cfg.tables)
    tables.write(spark.createDataFrame(_answers(), ANSWERS_SCHEMA), cfg.names.answers)
    tables.write(spark.createDataFrame(_runs(), RUNS_SCHEMA), cfg.names.runs)
    tables.write(spark.createDataFrame(_rejects(), REJECTS_SCHEMA), cfg.names.rejects)
    return tables


@pytest.fixture
def sql(tables, cfg, capsys):
    """Run a shipped query through the command line; returns its rows parsed from JSON lines."""

    def run(name: str, **params: str) -> list[dict]:
        argv = ["--set", f"tables.root={cfg.tables.root}", "--file", str(SQL_DIR / f"{name}.sql"),
                "--format", "json", "--log-level", "WARNING"]
        for key, value in params.items():
            argv += ["--param", f"{key}={value}"]
        capsys.readouterr()
        assert main(argv) == 0
        out = capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    return run


# Every shipped file must be checked here: a new query without a test fails this.
CHECKED = {"unanswered_questions", "most_cited_documents", "run_summary", "questions_by_document",
           "run_diff", "rejected_documents", "failed_rows"}


def test_every_shipped_query_is_checked_and_documents_its_parameters():
    shipped = {p.stem: p.read_text(encoding="utf-8") for p in SQL_DIR.glob("*.sql")}
    assert set(shipped) == CHECKED
    for name, text in shipped.items():
        assert text.startswith("-- "), f"{name}.sql: no header comment"
        header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
        assert "Parameters:" in header, name
        # Each marker is declared in the header (with a default or as required), and vice versa.
        assert set(query_parameters(text)) == set(declared_defaults(text)), name


def test_unanswered_questions_latest_run_and_given_run(sql):
    rows = sql("unanswered_questions")
    assert [(r["run_id"], r["question_id"], r["reason"]) for r in rows] == [
        ("r2", "q3", "abstained"), ("r2", "q7", "abstained"), ("r2", "q5", "failed"), ("r2", "q8", "failed")]
    q3 = rows[0]
    assert q3["n_contexts"] == 2 and q3["closest_distance"] == pytest.approx(0.6)
    assert rows[2]["error"] == "timeout after 60 s" and rows[2]["n_contexts"] == 0
    assert rows[3]["n_contexts"] == 1  # q4 is absent: the resume answered it
    older = sql("unanswered_questions", run_id="r1")
    assert [(r["question_id"], r["reason"]) for r in older] == [("q2", "abstained"), ("q4", "failed")]


def test_most_cited_documents_counts_contexts_of_the_run(sql):
    rows = sql("most_cited_documents")
    by_doc = {r["doc_id"]: r for r in rows}
    assert [r["doc_id"] for r in rows] == ["d1", "d2", "d3"]
    # d1: q1 (rank 1), q3 (ranks 1 and 2, abstained), q7 (rank 1, abstained).
    assert {k: by_doc["d1"][k] for k in ("citations", "questions", "answered_questions", "top1_citations")} == {
        "citations": 4, "questions": 3, "answered_questions": 1, "top1_citations": 3}
    assert by_doc["d1"]["mean_rank"] == pytest.approx(1.25) and by_doc["d1"]["min_distance"] == pytest.approx(0.1)
    assert by_doc["d1"]["title"] == "Title d1"
    # d3: q2 at rank 2 and q4 (resumed) at rank 1.
    assert (by_doc["d3"]["citations"], by_doc["d3"]["top1_citations"]) == (2, 1)
    assert "d9" not in by_doc and "d4" not in by_doc  # r1b's, and a failed row's
    assert [r["doc_id"] for r in sql("most_cited_documents", top="1")] == ["d1"]


def test_run_summary_outcomes_latency_percentiles_and_tokens(sql):
    rows = sql("run_summary")
    assert [r["run_id"] for r in rows] == ["r2", "r1b", "r1"]  # newest first
    r2 = rows[0]
    assert r2["status"] == "succeeded"  # the resume's row, not the first attempt's
    assert (r2["started_at"], r2["finished_at"]) == (_local(_t(2, 10)).isoformat(), _local(_t(2, 10, 33)).isoformat())
    assert {k: r2[k] for k in ("questions", "answered", "abstained", "failed")} == {
        "questions": 8, "answered": 4, "abstained": 2, "failed": 2}
    assert r2["abstention_rate"] == pytest.approx(2 / 6, abs=1e-4)
    # latencies 100..600: p50 is the 3rd of 6 values, p95 the 6th.
    assert (r2["latency_p50_ms"], r2["latency_p95_ms"]) == (300.0, 600.0)
    assert (r2["prompt_tokens"], r2["completion_tokens"], r2["total_tokens"]) == (321, 45, 366)
    assert rows[1]["status"] == "failed" and rows[1]["questions"] == 1
    r1 = rows[2]
    assert (r1["answered"], r1["abstained"], r1["failed"], r1["latency_p50_ms"]) == (4, 1, 1, 30.0)


def test_questions_by_document(sql):
    rows = sql("questions_by_document", doc_id="d1")
    assert [(r["question_id"], r["best_rank"], r["chunks_from_document"]) for r in rows] == [
        ("q1", 1, 1), ("q3", 1, 2), ("q7", 1, 1)]  # ordered by rank, then distance 0.1 < 0.6 < 0.8
    assert rows[1]["chunk_ids"] == ["d1-c0", "d1-c1"] and rows[1]["abstained"] is True
    assert [r["question_id"] for r in sql("questions_by_document", doc_id="d3")] == ["q4", "q2"]


def test_run_diff_against_the_previous_succeeded_run(sql):
    rows = sql("run_diff")
    assert {(r["run_id"], r["previous_run_id"]) for r in rows} == {("r2", "r1")}  # r1b failed: skipped
    changes = {r["question_id"]: r["change"] for r in rows}
    assert changes == {"q2": "now answered", "q3": "now abstains", "q4": "now succeeds", "q5": "new question",
                       "q6": "answer changed", "q7": "now abstains", "q8": "new question"}  # q1 unchanged
    q6 = next(r for r in rows if r["question_id"] == "q6")
    assert (q6["previous_answer"], q6["answer"]) == ("red", "crimson")
    assert {(r["abstained_before"], r["abstained_now"], r["abstention_delta"]) for r in rows} == {(1, 2, 1)}
    # The first run has no predecessor: everything is new.
    first = sql("run_diff", run_id="r1")
    assert {r["previous_run_id"] for r in first} == {None}
    assert {r["change"] for r in first} == {"new question"} and len(first) == 6


def test_rejected_documents_only_ingest_newest_first(sql):
    rows = sql("rejected_documents")
    assert [(r["run_id"], r["doc_id"], r["column"]) for r in rows] == [
        ("ing2", None, "doc_id"), ("ing2", "huge", "text"), ("ing1", "bad1", "text")]
    assert len(rows[1]["row_json"]) == 300 and rows[1]["reason"].startswith("longer than")
    assert [r["doc_id"] for r in sql("rejected_documents", run_id="ing1")] == ["bad1"]


def test_failed_rows_and_the_stage_that_failed(sql):
    rows = sql("failed_rows")
    assert [(r["question_id"], r["failed_stage"], r["error"]) for r in rows] == [
        ("q5", "retrieve", "timeout after 60 s"), ("q8", "generate", "CUDA out of memory")]


def test_missing_and_unknown_parameters_are_named(spark, tables, cfg, capsys):
    query = (SQL_DIR / "questions_by_document.sql").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match=r":doc_id.*--param doc_id=") as info:
        run_sql(spark, cfg, query, {}, source="questions_by_document.sql")
    assert "questions_by_document.sql" in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) docid; it takes :run_id, :doc_id"):
        bind_parameters(query, {"docid": "d1"})
    assert bind_parameters(query, {"doc_id": "d1"}) == {"run_id": "", "doc_id": "d1"}
    # On the command line: exit status 2 and the parameter named on stderr.
    with pytest.raises(SystemExit) as exit_info:
        main(["--set", f"tables.root={cfg.tables.root}", "--file", "questions_by_document", "--log-level", "WARNING"])
    assert exit_info.value.code == 2
    assert "missing value for parameter(s) :doc_id" in capsys.readouterr().err


def test_unknown_view_lists_the_views_and_where_missing_tables_would_be(spark, tables, cfg):
    with pytest.raises(TableError) as info:
        run_sql(spark, cfg, "SELECT * FROM metricz")
    message = str(info.value)
    assert "`metricz`" in message
    assert f"answers = rag.answers at {tables.location('rag.answers')}" in message
    assert "metrics = rag.metrics (no table at" in message and "documents = rag.documents (no table" in message


def test_ad_hoc_query_table_output_and_row_limit(tables, cfg, capsys):
    argv = ["--set", f"tables.root={cfg.tables.root}", "--log-level", "WARNING", "--max-rows", "2",
            "SELECT run_id, count(*) AS n, max(latency_ms) AS slowest, max(created_at) AS last "
            "FROM answers GROUP BY run_id ORDER BY run_id"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("|")[0].strip() == "run_id" and set(lines[1]) <= {"-", "+"}
    assert lines[2].split("|")[:3] == ["r1     ", " 6 ", "      50 "] and lines[3].startswith("r1b")
    assert len(lines) == 5 and lines[-1] == "(2 rows; more exist, raise --max-rows (now 2))"
    assert _local(_t(1, 12)).isoformat(sep=" ") in lines[3]


def test_run_sql_returns_a_dataframe_with_params(spark, tables, cfg):
    df = run_sql(spark, cfg, "SELECT question_id FROM answers WHERE run_id = :run AND error IS NOT NULL;",
                 {"run": "r2"})
    assert sorted(r.question_id for r in df.collect()) == ["q5", "q8"]


def test_format_rows_nested_values_csv_and_clipping():
    rows = [("a", None, [{"doc_id": "d1", "rank": 1}], True, 0.123456), ("b" * 30, 7, [], False, 2.0)]
    cols = ["name", "n", "contexts", "ok", "score"]
    table = format_rows(cols, rows, "table", max_width=10).splitlines()
    assert table[2].split(" | ") == ["a         ", "NULL", '[{"doc_id…', "true ", "0.1235"]
    assert table[3].startswith("b" * 9 + "…")
    assert format_rows(cols, rows, "csv").splitlines()[1] == 'a,,"[{""doc_id"": ""d1"", ""rank"": 1}]",true,0.123456'
    assert json.loads(format_rows(cols, rows, "json").splitlines()[0])["contexts"] == [{"doc_id": "d1", "rank": 1}]


def test_find_sql_file_by_name_and_a_clear_miss(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert find_sql_file("run_summary").resolve() == SQL_DIR / "run_summary.sql"
    with pytest.raises(ConfigError, match=r"no such file.*shipped queries: failed_rows, most_cited_documents"):
        find_sql_file("run_sumary")


def test_parameter_markers_ignore_comments_strings_and_casts():
    query = "SELECT ':a', `:b`, x::int /* :c */ FROM t WHERE y = :d -- :e\nAND z = :f AND w = :d"
    assert query_parameters(query) == ["d", "f"]


def test_docstring_examples():
    import doctest

    import sparkrag.pipelines.sql

    assert doctest.testmod(sparkrag.pipelines.sql).failed == 0
