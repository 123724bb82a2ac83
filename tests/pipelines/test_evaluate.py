"""evaluate + report + jobs/evaluate: SQuAD scoring, hand-computed run metrics, report files, ANN audit.

Real Spark local[2], real Delta (delta-rs), real ChromaDB, real all-MiniLM-L6-v2 queries.
The answer run below is built by hand so that every metric can be computed on paper.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkrag.config import RagConfig, load_config
from sparkrag.errors import ConfigError, SchemaError, TableError
from sparkrag.pipelines.evaluate import METRICS_SCHEMA, EvalOptions, ann_audit, evaluate_run, exact_top_k, latest_run_id
from sparkrag.pipelines.report import REPORT_FILES, exact_match, normalize_answer, score_questions, token_f1
from sparkrag.schemas import ANSWERS_SCHEMA, CHUNKS_SCHEMA

pytestmark = pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS_DDL = "question_id string, question string, doc_id string, answers array<string>, is_impossible boolean"


# ---- the official SQuAD v2.0 script's functions, verbatim logic, as the reference ----

def ref_normalize(s):
    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return " ".join(remove_articles(remove_punc(s.lower())).split())


def ref_tokens(s):
    return ref_normalize(s).split() if s else []


def ref_f1(gold, pred):
    gold_toks, pred_toks = ref_tokens(gold), ref_tokens(pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def ref_scores(pred, answers):
    gold = [a for a in answers if ref_normalize(a)] or [""]
    return (max(int(ref_normalize(a) == ref_normalize(pred)) for a in gold), max(ref_f1(a, pred) for a in gold))


# ---- SQuAD scoring ----

@pytest.mark.parametrize("text, expected", [
    ("The Quick, Brown fox!", "quick brown fox"),
    ("an apple a day", "apple day"),
    ("Theatre of Anna", "theatre of anna"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("  multiple\tspaces\nhere ", "multiple spaces here"),
    ("the-end", "theend"),  # punctuation removed before articles: no word boundary left
    ("", ""),
    (None, ""),
])
def test_normalize_answer_known_cases(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_and_f1_known_cases():
    assert exact_match("the Beatles", ["Beatles", "The Fab Four"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert token_f1("in the late 1990s", ["late 1990s"]) == pytest.approx(0.8)  # p 2/3, r 1
    assert token_f1("Houston", ["Houston, Texas", "Houston"]) == 1.0  # max over gold answers
    assert token_f1("the cat cat", ["cat"]) == pytest.approx(2 / 3)  # repeated tokens count once per match
    assert token_f1("dog", ["cat"]) == 0.0
    # no gold answer (or only punctuation): the empty prediction is right, anything else wrong
    assert exact_match("", []) == 1.0 and token_f1("", ["!!"]) == 1.0
    assert exact_match("Paris", []) == 0.0 and token_f1("Paris", []) == 0.0
    assert exact_match("paris", ["!!", "Paris."]) == 1.0  # empty-after-normalisation gold dropped


_WORDS = st.sampled_from(["the", "a", "an", "The", "Paris", "paris,", "1990s", "late", "U.S.", "café", "-", "!",
                          "An", "theatre", "and", "Houston", "Texas"])
_TEXT = st.lists(_WORDS, max_size=6).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(pred=_TEXT, answers=st.lists(_TEXT, max_size=3))
def test_scores_equal_the_official_script(pred, answers):
    em, f1 = ref_scores(pred, answers)
    assert exact_match(pred, answers) == em
    assert token_f1(pred, answers) == pytest.approx(f1)


# ---- a hand-built answer run ----

def _ctx(doc_ids):
    return [{"chunk_id": f"{d}-c{r}", "doc_id": d, "title": None, "text": f"text of {d}", "distance": 0.1 * r,
             "rank": r, "metadata": {}, "retrievers": {"dense": r}, "fusion_score": None}
            for r, d in enumerate(doc_ids, start=1)]


def _answer(qid, run_id, when, *, contexts, answer=None, abstained=False, latency=None, tokens=(None, None),
            error=None):
    return {"question_id": qid, "question": f"question {qid}", "history": None, "answer": answer,
            "abstained": abstained, "contexts": None if contexts is None else _ctx(contexts), "filters_json": "{}",
            "prompt": None, "model_id": "extractive:test", "embedding_model": "minilm", "collection": "c",
            "retrieval_mode": "dense", "prompt_tokens": tokens[0], "completion_tokens": tokens[1],
            "latency_ms": latency, "error": error, "run_id": run_id, "created_at": when}


QUESTIONS = [  # question_id, question, gold doc, gold answers, is_impossible
    ("q1", "Capital of France?", "d1", ["Paris"], False),
    ("q2", "When did she become famous?", "d2", ["late 1990s", "1990s"], False),
    ("q3", "Where did she grow up?", "d3", ["Houston, Texas"], False),
    ("q4", "Unanswerable one?", "d4", [], True),
    ("q5", "Unanswerable two?", "d5", [], True),
    ("q6", "Who sang it?", "d6", ["Beyoncé"], False),
    ("q7", "Never answered?", "d7", ["x"], False),
    ("q9", "Unanswerable three?", "d9", [], True),
]
OLD, NEW = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
RUN_B = [  # the latest run
    _answer("q1", "answer-b", NEW, contexts=["d1", "dx"], answer="paris.", latency=10.0, tokens=(100, 5)),
    _answer("q2", "answer-b", NEW, contexts=["dx", "dy", "d2"], answer="in the late 1990s", latency=20.0,
            tokens=(200, 10)),
    _answer("q3", "answer-b", NEW, contexts=["dx", "dy", "dz", "dw", "d3"], abstained=True,
            answer="Sorry. I cannot find the answer based on the context.", latency=30.0, tokens=(300, 15)),
    _answer("q4", "answer-b", NEW, contexts=["dx", "dy"], abstained=True, answer="Sorry.", latency=40.0,
            tokens=(400, 20)),
    _answer("q5", "answer-b", NEW, contexts=["dx", "d5", "dy", "d5"], answer="1995", latency=1000.0,
            tokens=(500, 25)),
    _answer("q6", "answer-b", NEW, contexts=None, abstained=None, error="RuntimeError: boom"),
    _answer("q9", "answer-b", NEW, contexts=["d9"], answer="x", latency=50.0, tokens=(100, 5)),
    _answer("q8", "answer-b", NEW, contexts=["d8"], answer="no gold", latency=99999.0, tokens=(9999, 999)),
]
RUN_A = [_answer(q, "answer-a", OLD, contexts=[d], answer=a[0] if a else "", abstained=not a, latency=1.0)
         for q, _, d, a, _ in QUESTIONS]

# On paper (q7 unanswered, q8 has no gold): retrieval over q1..q6, q9 -> gold ranks 1, 3, 5, -, 2, -, 1.
EXPECTED = {
    "recall@1": 2 / 7, "recall@3": 4 / 7, "recall@5": 5 / 7, "recall@10": 5 / 7,
    "mrr": (1 + 1 / 3 + 1 / 5 + 1 / 2 + 1) / 7,
    # answerable q1 (EM 1), q2 (F1 0.8), q3 (abstained: ""), q6 (error: "")
    "exact_match": 1 / 4, "f1": (1 + 0.8) / 4,
    # impossible q4 (abstained: tp), q5 and q9 (answered: fn); q3 abstained though answerable (fp)
    "abstention_tp": 1, "abstention_fp": 1, "abstention_fn": 2, "abstention_tn": 3,
    "abstention_precision": 1 / 2, "abstention_recall": 1 / 3, "abstention_f1": 0.4, "abstention_rate": 2 / 7,
    # latencies 10 20 30 40 50 1000 (q6 has none): numpy's linear percentiles
    "latency_ms_p50": 35.0, "latency_ms_p95": 50 + 0.75 * 950, "latency_ms_mean": 1150 / 6,
    "prompt_tokens_total": 1600, "prompt_tokens_mean": 1600 / 6,
    "completion_tokens_total": 80, "completion_tokens_mean": 80 / 6,
    "errors": 1, "error_rate": 1 / 7,
}


def make_cfg(root: Path, *overrides: str) -> RagConfig:
    return load_config(RagConfig, None, [f"tables.root={root / 'tables'}", f"chroma.path={root / 'chroma'}",
                                         *overrides])


def write_run_tables(spark, cfg: RagConfig, questions=QUESTIONS, answers=RUN_A + RUN_B) -> None:
    from sparkrag.delta import open_tables

    tables = open_tables(spark, cfg.tables)
    tables.write(spark.createDataFrame(questions, QUESTIONS_DDL), cfg.names.questions, mode="overwrite")
    tables.write(spark.createDataFrame(answers, ANSWERS_SCHEMA), cfg.names.answers, mode="overwrite")


@pytest.fixture(scope="module")
def evaluated(spark, tmp_path_factory):
    """The job run once on run B (the latest), through its command line."""
    from sparkrag.jobs.evaluate import run

    root = tmp_path_factory.mktemp("evaluate")
    cfg = make_cfg(root)
    write_run_tables(spark, cfg)
    result = run(["--set", f"tables.root={root / 'tables'}", "--ann-sample", "0",
                   "--report-dir", str(root / "report-{eval_run_id}")], spark=spark)
    return cfg, root, result


def test_default_run_is_the_latest_and_metrics_match_hand_computation(evaluated):
    _, _, result = evaluated
    assert result["run_id"] == "answer-b"
    for key, value in EXPECTED.items():
        assert result["metrics"][key] == pytest.approx(value), key
    assert result["counts"] == {"questions": 8, "answers": 8, "evaluated": 7, "unanswered_questions": 1,
                                "answers_without_gold": 1}
    assert result["confusion"] == {"tp": 1, "fp": 1, "fn": 2, "tn": 3}
    assert "ann_recall@10" not in result["metrics"]  # --ann-sample 0 disables the audit


def test_report_files(evaluated):
    _, root, result = evaluated
    report = result["report"]
    assert Path(report["report.md"]).parent == root / f"report-{result['eval_run_id']}"
    assert sorted(report) == sorted(REPORT_FILES)
    for name in REPORT_FILES[1:]:
        data = Path(report[name]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    text = Path(report["report.md"]).read_text()
    assert "answer-b" in text and "| recall@5 | 0.7143 | 7 |" in text and "| abstention_recall | 0.3333 | 3 |" in text
    assert "At most 5 contexts" in text  # recall@10 is capped by the run's contexts
    assert all(f"]({name})" in text for name in REPORT_FILES[1:])


def test_metrics_table_readable_by_delta_rs_and_run_recorded(spark, evaluated):
    from deltalake import DeltaTable

    from sparkrag.delta import open_tables

    cfg, root, result = evaluated
    assert result["metrics_table"] == str(root / "tables" / "rag" / "metrics")
    pdf = DeltaTable(result["metrics_table"]).to_pandas()
    assert list(pdf.columns) == METRICS_SCHEMA.fieldNames()
    assert set(pdf["eval_run_id"]) == {result["eval_run_id"]} and set(pdf["run_id"]) == {"answer-b"}
    row = pdf[(pdf["metric"] == "recall") & (pdf["k"] == 3)]
    assert len(row) == 1 and row["value"].iloc[0] == pytest.approx(4 / 7) and row["n"].iloc[0] == 7
    assert pdf[pdf["metric"] == "mrr"]["k"].isna().all()
    assert set(pdf["model_id"]) == {"extractive:test"}

    rows = [r.asDict() for r in open_tables(spark, cfg.tables).read(cfg.names.runs).collect()]
    assert len(rows) == 1 and rows[0]["job"] == "evaluate" and rows[0]["status"] == "succeeded"
    assert rows[0]["run_id"] == result["eval_run_id"]
    assert rows[0]["metrics"]["recall@5"] == pytest.approx(5 / 7)
    assert rows[0]["counts"]["evaluated"] == 7 and rows[0]["model_id"] == "extractive:test"


def test_explicit_run_id_and_no_report(spark, evaluated):
    cfg, _, _ = evaluated
    result = evaluate_run(spark, cfg, EvalOptions(run_id="answer-a", ann_sample=0, report_dir=None))
    assert result["report"] is None
    m = result["metrics"]
    assert m["recall@1"] == 1.0 and m["mrr"] == 1.0 and m["exact_match"] == 1.0  # run A is perfect
    assert m["abstention_precision"] == 1.0 and m["abstention_recall"] == 1.0
    assert result["counts"]["evaluated"] == 8


def test_latest_run_id_and_unknown_run(spark, evaluated):
    from sparkrag.delta import open_tables

    cfg, _, _ = evaluated
    assert latest_run_id(open_tables(spark, cfg.tables).read(cfg.names.answers)) == "answer-b"
    with pytest.raises(TableError, match="'answer-zzz' has no rows"):
        evaluate_run(spark, cfg, EvalOptions(run_id="answer-zzz", ann_sample=0, report_dir=None))


def test_bad_inputs_name_the_column_or_option(spark, tmp_path):
    cfg = make_cfg(tmp_path)
    write_run_tables(spark, cfg)
    with pytest.raises(SchemaError, match=r"'gold_doc'.*--gold-doc-column"):
        evaluate_run(spark, cfg, EvalOptions(gold_doc_column="gold_doc", ann_sample=0, report_dir=None))
    with pytest.raises(SchemaError, match=r"'question'.*must be array<string>"):
        evaluate_run(spark, cfg, EvalOptions(gold_answers_column="question", ann_sample=0, report_dir=None))
    with pytest.raises(ConfigError, match="ks"):
        evaluate_run(spark, cfg, EvalOptions(ks=(0, 5)))
    with pytest.raises(TableError, match="names.questions"):
        evaluate_run(spark, make_cfg(tmp_path / "empty"), EvalOptions(ann_sample=0, report_dir=None))
    dupes = QUESTIONS + [("q1", "again", "d1", ["Paris"], False)]
    write_run_tables(spark, cfg, questions=dupes)
    with pytest.raises(SchemaError, match=r"repeat.*'q1'"):
        evaluate_run(spark, cfg, EvalOptions(ann_sample=0, report_dir=None))


def test_score_questions_without_gold_columns_leaves_metrics_out():
    import pandas as pd

    pdf = pd.DataFrame({"gold_doc_id": [None], "gold_rank": [None], "gold_answers": [None], "is_impossible": [None],
                        "answer": ["x"], "abstained": [False], "latency_ms": [None], "prompt_tokens": [None],
                        "completion_tokens": [None], "error": [None]})
    metrics, confusion = score_questions(pdf)
    assert confusion is None
    assert {m.key for m in metrics} == {"abstention_rate", "errors", "error_rate"}
    with pytest.raises(SchemaError, match="gold_rank"):
        score_questions(pdf.drop(columns=["gold_rank"]))


# ---- ANN audit ----

def _clustered_unit_vectors(n, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def audit_setup(spark, tmp_path_factory):
    """A chunks table of 400 unit vectors (MiniLM's 384 dims) and two Chroma collections of them."""
    import pandas as pd

    from sparkrag.delta import open_tables
    from sparkrag.index.vectorstore import embedded_writer, open_collection, to_chroma_metadata, upsert_chunks

    root = tmp_path_factory.mktemp("audit")
    good = make_cfg(root, "chroma.collection=good")
    bad = make_cfg(root, "chroma.collection=bad", "chroma.hnsw_search_ef=1", "chroma.hnsw_max_neighbors=2",
                   "chroma.hnsw_construction_ef=2")
    vectors = _clustered_unit_vectors(400, 384, seed=1)
    now = dt.datetime.now(dt.timezone.utc)
    rows = [{"chunk_id": f"c{i:03d}", "doc_id": f"d{i // 4}", "chunk_index": i % 4, "text": f"chunk {i}",
             "title": None, "metadata": {}, "content_hash": "h", "doc_hash": "h", "token_count": 3,
             "char_start": 0, "char_end": 7, "embedding": v.tolist(), "embedding_model": good.encoder.model,
             "embedding_dim": 384, "run_id": "ingest-1", "created_at": now} for i, v in enumerate(vectors)]
    open_tables(spark, good.tables).write(spark.createDataFrame(rows, CHUNKS_SCHEMA), good.names.chunks)
    for cfg in (good, bad):
        with embedded_writer(cfg.chroma) as client:
            col = open_collection(client, cfg.chroma, embedding_model=cfg.encoder.model, dim=384, create=True)
            upsert_chunks(col, [r["chunk_id"] for r in rows], vectors, [r["text"] for r in rows],
                          [to_chroma_metadata(r["doc_id"], r["chunk_index"], None, None) for r in rows])
    questions = pd.read_json(ROOT / "resources" / "sample" / "questions.jsonl", lines=True)
    return good, bad, vectors, questions


def test_ann_audit_high_recall_at_shipped_defaults(spark, audit_setup):
    good, _, _, questions = audit_setup
    result = ann_audit(spark, good, questions_pdf=questions, k=10, sample=40)
    assert result["queries"] == 40 and result["k"] == 10 and result["chunks"] == result["collection_count"] == 400
    assert result["hnsw"]["ef_search"] == 100 and result["hnsw"]["max_neighbors"] == 16
    assert result["ann_recall"] >= 0.98


def test_ann_audit_detects_a_degraded_index(spark, audit_setup):
    good, bad, _, questions = audit_setup
    result = ann_audit(spark, bad, questions_pdf=questions, k=10, sample=40)
    assert result["hnsw"]["ef_search"] == 1 and result["hnsw"]["max_neighbors"] == 2
    assert result["ann_recall"] < 0.8
    assert result["ann_recall"] < ann_audit(spark, good, questions_pdf=questions, k=10, sample=40)["ann_recall"]


def test_evaluate_run_with_the_audit_stores_ann_recall(spark, audit_setup):
    from deltalake import DeltaTable

    good, _, _, _ = audit_setup
    write_run_tables(spark, good)
    result = evaluate_run(spark, good, EvalOptions(ann_sample=20, report_dir=None))
    assert result["ann_audit"]["queries"] == 7  # capped by the 7 questions answered in run B
    assert result["metrics"]["ann_recall@10"] == pytest.approx(result["ann_audit"]["ann_recall"])
    assert result["metrics"]["ann_recall@10"] >= 0.98
    pdf = DeltaTable(result["metrics_table"]).to_pandas()
    row = pdf[pdf["metric"] == "ann_recall"]
    assert row["k"].tolist() == [10] and row["n"].tolist() == [7]


@pytest.mark.filterwarnings("ignore:toPandas attempted Arrow optimization:UserWarning")
def test_exact_top_k_merges_batches_and_partitions(spark, audit_setup):
    from sparkrag.delta import open_tables

    good, _, vectors, _ = audit_setup
    queries = _clustered_unit_vectors(5, 384, seed=2)
    chunks = open_tables(spark, good.tables).read(good.names.chunks).repartition(3)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "37")  # several Arrow batches per task: the running top-k must merge them
    try:
        found = exact_top_k(chunks, queries, k=7, space="cosine")
    finally:
        spark.conf.set(key, before)
    brute = np.argsort(-(queries.astype(np.float64) @ vectors.astype(np.float64).T), axis=1)[:, :7]
    assert found == [[f"c{i:03d}" for i in row] for row in brute]
    with pytest.raises(Exception, match="expected an embedding of dimension 8"):
        exact_top_k(chunks, queries[:, :8], k=3, space="cosine")


def test_ann_audit_bad_arguments(spark, audit_setup):
    good, _, _, questions = audit_setup
    with pytest.raises(SchemaError, match="'question'"):
        ann_audit(spark, good, questions_pdf=questions.drop(columns=["question"]), k=10, sample=5)
    with pytest.raises(ConfigError, match="sample"):
        ann_audit(spark, good, questions_pdf=questions, k=10, sample=0)


def test_job_flags_become_options():
    from sparkrag.jobs.evaluate import build_parser, eval_options_from_args

    args = build_parser().parse_args(["--run-id", "r1", "--ks", "1,20", "--impossible-column", "",
                                      "--report-dir", "", "--ann-sample", "7"])
    assert eval_options_from_args(args) == EvalOptions(run_id="r1", ks=(1, 20), impossible_column=None,
                                                       report_dir=None, ann_sample=7)
    with pytest.raises(ConfigError, match="--ks"):
        eval_options_from_args(build_parser().parse_args(["--ks", "1,x"]))
