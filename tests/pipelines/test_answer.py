"""The answer job end to end: real local[2] Spark, real Delta (delta-rs), real Chroma (embedded
directory and a ``chroma run`` server), real MiniLM, and a tiny Llama loaded through the same
``from_pretrained`` path as nvidia/Llama3-ChatQA-1.5-8B.

One small corpus (18 documents, 31 chunks: sample paragraphs, French paragraphs, a rare
term, two near-duplicates) is ingested once per module. Each answer run costs 10-30 s on a
loaded 2-core machine, so the module makes few of them and checks many things on each:

* ``baseline``: extractive, ANN, no filters (schema, contexts, lineage, abstention, faults);
* ``filtered``: static ``where`` + per-row ``where_columns`` + per-row ``where_document`` +
  ``max_chunks_per_doc=1`` + ``max_distance``, each proven against the baseline's contexts;
* ``hybrid``: the ``filtered`` settings with ``--retrieval-mode hybrid`` through ``jobs/answer.py``,
  with partitioned shard access (scatter-gather; replicated is the other runs');
* ``exact_rerun``: ``--vector-search exact --run-id <baseline's>`` through ``jobs/answer.py``:
  the same chunk ids as ANN, and the run's rows replaced rather than duplicated;
* ``chatqa`` / ``chatqa_resumed``: the tiny Llama through ``jobs/answer.py``, then ``--resume``;
* ``server``: the collection loaded into a ``chroma run`` server and answered from it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from conftest import NATIVE

from sparkrag.config import RagConfig, load_config
from sparkrag.errors import SchemaError, VectorStoreError
from sparkrag.generation.prompt import ABSTAIN_TEXT, SYSTEM_PROMPT
from sparkrag.schemas import ANSWERS_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = {r["doc_id"]: r for r in map(json.loads, (ROOT / "resources/sample/documents.jsonl").open(encoding="utf-8"))}
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
COLLECTION = "answer_tests"
TOP_K = 6
RARE = "Zephyrine"

# -- corpus ------------------------------------------------------------------------------
_REAL = ["Beyoncé#0", "Beyoncé#1", "Beyoncé#2", "Frédéric_Chopin#0", "Frédéric_Chopin#1", "IPod#0", "IPod#1",
         "Solar_energy#0", "Solar_energy#1", "New_York_City#0", "Spectre_(2015_film)#0", "2008_Sichuan_earthquake#0"]
_SYNTHETIC = [
    ("chopin-fr", "Frédéric Chopin", "fr",
     "Frédéric Chopin est un compositeur et pianiste né le 1er mars 1810 à Żelazowa Wola, en Pologne, et mort le "
     "17 octobre 1849 à Paris. Il quitte Varsovie en 1830 et s'installe à Paris, où il enseigne le piano. Ses "
     "mazurkas et ses polonaises rappellent la musique populaire polonaise."),
    ("ipod-fr", "iPod", "fr",
     "L'iPod est une gamme de baladeurs numériques conçue et commercialisée par Apple à partir d'octobre 2001. "
     "Le premier modèle contenait un petit disque dur et se pilotait avec une molette tactile."),
]
_NOTES = [
    ("note-rare", "Reactor maintenance",
     f"The {RARE} valve regulates coolant flow in the Brightwater test reactor. Engineers inspect the {RARE} "
     "valve every ninety days and replace its seals each spring."),
    ("note-log", "Maintenance log",
     "The maintenance log lists every inspection of the pumps, the filters and the cooling towers, with the "
     "engineer who signed it off."),
    ("note-dup-a", "Harbor Street bakery",
     "The Harbor Street bakery opens at six in the morning and sells rye bread, croissants and lemon tarts to "
     "the fishermen of the old port."),
    ("note-dup-b", "Harbor Street bakery",
     "The Harbor Street bakery opens at six in the morning and sells rye bread, croissants and lemon tarts to "
     "the fishermen of the old harbour."),
]


def corpus() -> list[dict[str, Any]]:
    docs = [{"doc_id": d, "title": SAMPLE[d]["title"], "text": SAMPLE[d]["text"], "source": "wikipedia",
             "lang": "en"} for d in _REAL]
    docs += [{"doc_id": d, "title": t, "text": x, "source": "wikipedia", "lang": lang} for d, t, lang, x in _SYNTHETIC]
    docs += [{"doc_id": d, "title": t, "text": x, "source": "notes", "lang": "en"} for d, t, x in _NOTES]
    return docs


LONG_QUESTION = "Please explain solar energy. " + " ".join(
    ["Tell me how sunlight is turned into heat and electricity, which technologies are used, and why."] * 40)
# question_id -> (question, lang filter column, where_document needle column)
QUESTIONS: dict[str, tuple[str | None, str | None, str | None]] = {
    "q01-beyonce": ("When did Beyonce start becoming popular?", None, None),
    "q02-chopin-fr": ("Where and when was Frédéric Chopin born?", "fr", None),
    "q03-grammy": ("Which awards did Beyoncé win for her albums?", None, "Grammy"),
    "q04-rare": (f"What does the {RARE} valve regulate?", None, None),
    "q05-bakery": ("When does the Harbor Street bakery open?", None, None),
    "q06-ipod": ("When was the first iPod released?", None, None),
    "q07-offtopic": ("What torque should bicycle pedal threads be tightened to?", None, None),
    "q08-blank": ("   ", None, None),
    "q09-null": (None, None, None),
    "q10-long": (LONG_QUESTION, None, None),
}
QUESTIONS_SCHEMA = "qid string, question string, q_lang string, q_needle string"
EMPTY = {"q08-blank", "q09-null"}
OFFTOPIC = "q07-offtopic"
BASELINE_RUN = "answer-baseline"
CHATQA_RUN = "answer-chatqa"
MAX_DISTANCE = 0.7  # cuts the weakest contexts of on-topic questions, keeps their best ones
MAX_NEW_TOKENS = 8
MAX_PROMPT_TOKENS = 400  # room for the question and a few contexts; LONG_QUESTION alone does not fit
FILTERS = [  # static pre-query, per-row pre-query, per-row in-query, two post-query filters
    "retrieval.where={source: wikipedia}", "retrieval.where_columns={lang: q_lang}",
    "retrieval.where_document_column=q_needle", "retrieval.max_chunks_per_doc=1",
    f"retrieval.max_distance={MAX_DISTANCE}",
]


def base_overrides(root: Path) -> list[str]:
    return [f"tables.root={root / 'tables'}", f"chroma.path={root / 'chroma'}", f"chroma.collection={COLLECTION}",
            "documents.metadata=[source, lang]", "chunking.max_tokens=96", "chunking.overlap_tokens=16",
            "questions.id=qid", f"retrieval.top_k={TOP_K}", "retrieval.fetch_k=20",
            # 0.35 (the default): every on-topic question here scores >= 0.45, the off-topic one < 0.3
            "generator.extractive_threshold=0.35",
            # 2-3 of the 10 questions fail on purpose (blank, null, too long): not a failed run here
            "answer.max_error_rate=0.5"]


def make_cfg(root: Path, *overrides: str) -> RagConfig:
    return load_config(RagConfig, None, [*base_overrides(root), *overrides])


def job_args(root: Path, *args: str, sets: tuple[str, ...] = ()) -> list[str]:
    """argv for jobs/answer.py main with the module's settings as --set overrides."""
    out = list(args)
    for item in [*base_overrides(root), *sets]:
        out += ["--set", item]
    return out


def tables_of(spark, cfg: RagConfig):
    from sparkrag.delta import open_tables

    return open_tables(spark, cfg.tables)


def answer_rows(spark, cfg: RagConfig, run_id: str) -> list[dict[str, Any]]:
    df = tables_of(spark, cfg).read(cfg.names.answers)
    return [r.asDict(recursive=True) for r in df.where(df.run_id == run_id).collect()]


def run_rows(spark, cfg: RagConfig, run_id: str) -> list[dict[str, Any]]:
    df = tables_of(spark, cfg).read(cfg.names.runs)
    return [r.asDict(recursive=True) for r in df.where(df.run_id == run_id).collect()]


@dataclass
class Run:
    record: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def by_id(self) -> dict[str, dict[str, Any]]:
        return {r["question_id"]: r for r in self.rows}


def capture(spark, cfg: RagConfig, record: dict[str, Any]) -> Run:
    return Run(record, answer_rows(spark, cfg, record["run_id"]))


def ids(contexts: list[dict[str, Any]] | None) -> list[str]:
    return [c["chunk_id"] for c in contexts or []]


def first_per_doc(contexts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ctx in contexts:
        out.setdefault(ctx["doc_id"], ctx)
    return list(out.values())  # dicts keep insertion order: nearest first


# -- fixtures ----------------------------------------------------------------------------
@dataclass
class Corpus:
    root: Path
    cfg: RagConfig
    ingest: dict[str, Any]


@pytest.fixture(scope="module")
def indexed(spark, tmp_path_factory) -> Corpus:
    from sparkrag.pipelines.ingest import run_ingest

    root = tmp_path_factory.mktemp("answer")
    cfg = make_cfg(root)
    tables = tables_of(spark, cfg)
    docs = spark.createDataFrame(corpus(), "doc_id string, title string, text string, source string, lang string")
    tables.write(docs, cfg.names.documents)
    record = run_ingest(spark, cfg)
    questions = [(qid, q, lang, needle) for qid, (q, lang, needle) in QUESTIONS.items()]
    tables.write(spark.createDataFrame(questions, QUESTIONS_SCHEMA), cfg.names.questions)
    return Corpus(root, cfg, record)


@pytest.fixture(scope="module")
def baseline(spark, indexed) -> Run:
    from sparkrag.pipelines.answer import run_answer

    cfg = make_cfg(indexed.root, f"answer.run_id={BASELINE_RUN}")
    return capture(spark, cfg, run_answer(spark, cfg))


@pytest.fixture(scope="module")
def filtered(spark, indexed, baseline) -> Run:
    from sparkrag.pipelines.answer import run_answer

    cfg = make_cfg(indexed.root, *FILTERS)
    return capture(spark, cfg, run_answer(spark, cfg))


@pytest.fixture(scope="module")
def hybrid(spark, indexed, filtered) -> Run:
    """The filtered run's settings, BM25 and dense fused; partitioned shard access (on every stack)."""
    from sparkrag.jobs.answer import run

    record = run(job_args(indexed.root, "--retrieval-mode", "hybrid",
                          sets=(*FILTERS, "retrieval.shard_access=partitioned")), spark=spark)
    return capture(spark, indexed.cfg, record)


@pytest.fixture(scope="module")
def exact_rerun(spark, indexed, baseline) -> Run:
    """The baseline run answered again, exact mode, under the same --run-id."""
    from sparkrag.jobs.answer import run

    record = run(job_args(indexed.root, "--vector-search", "exact", "--run-id", BASELINE_RUN), spark=spark)
    return capture(spark, indexed.cfg, record)


def chatqa_args(root: Path, tiny_llama_path: str, *extra: str) -> list[str]:
    return job_args(root, "--generator", "chatqa", "--model", tiny_llama_path, "--run-id", CHATQA_RUN, *extra,
                    sets=("answer.keep_prompt=true", f"generator.max_new_tokens={MAX_NEW_TOKENS}",
                          f"generator.max_prompt_tokens={MAX_PROMPT_TOKENS}"))


@pytest.fixture(scope="module")
def chatqa(spark, indexed, tiny_llama_path) -> Run:
    from sparkrag.jobs.answer import run

    return capture(spark, indexed.cfg, run(chatqa_args(indexed.root, tiny_llama_path), spark=spark))


RESUME_DELETED = ("q01-beyonce", "q06-ipod")


@pytest.fixture(scope="module")
def chatqa_resumed(spark, indexed, chatqa, tiny_llama_path) -> tuple[Run, Run]:
    """(the run before, after deleting two answered rows and running --resume)."""
    from sparkrag.jobs.answer import run

    keys = ", ".join(f"'{q}'" for q in RESUME_DELETED)
    tables_of(spark, indexed.cfg).delete_where(indexed.cfg.names.answers,
                                               f"run_id = '{CHATQA_RUN}' AND question_id IN ({keys})")
    before = capture(spark, indexed.cfg, chatqa.record)
    record = run(chatqa_args(indexed.root, tiny_llama_path, "--resume"), spark=spark)
    return before, capture(spark, indexed.cfg, record)


@pytest.fixture(scope="module")
def query_encoder():
    from sparkrag.config import EncoderConfig
    from sparkrag.embed import make_encode_fn

    return make_encode_fn(EncoderConfig(model=MODEL), role="query")()


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_path)


# -- extractive run: schema, contexts, lineage, runs table, abstention, faults -----------
def test_extractive_run_writes_one_row_per_question_with_the_answers_schema(spark, indexed, baseline):
    from sparkrag.schemas import check_schema

    schema = tables_of(spark, indexed.cfg).schema(indexed.cfg.names.answers)  # as the Delta log declares it
    assert [f.name for f in schema.fields] == [f.name for f in ANSWERS_SCHEMA.fields]
    check_schema(schema, ANSWERS_SCHEMA, table="answers")  # every type, nullability aside
    if not NATIVE:  # delta-rs keeps nested non-null fields; Spark's file writers make them nullable
        assert [(f.name, f.dataType) for f in schema.fields] == [(f.name, f.dataType) for f in ANSWERS_SCHEMA.fields]
    assert sorted(r["question_id"] for r in baseline.rows) == sorted(QUESTIONS)
    for qid, row in baseline.by_id.items():
        assert row["question"] == QUESTIONS[qid][0]


def test_contexts_are_what_the_collection_holds(indexed, baseline, query_encoder):
    from sparkrag.index.vectorstore import RESERVED_METADATA_KEYS, open_client

    collection = open_client(indexed.cfg.chroma).get_collection(COLLECTION, embedding_function=None)
    answered = {q: r for q, r in baseline.by_id.items() if q not in EMPTY}
    vectors = dict(zip(answered, query_encoder([QUESTIONS[q][0] for q in answered])))
    for qid, row in answered.items():
        contexts = row["contexts"]
        assert [c["rank"] for c in contexts] == list(range(1, TOP_K + 1)), qid
        stored = collection.get(ids=ids(contexts), include=["documents", "metadatas", "embeddings"])
        by_id = {i: (d, m, e) for i, d, m, e in zip(stored["ids"], stored["documents"], stored["metadatas"],
                                                   stored["embeddings"])}
        assert set(by_id) == set(ids(contexts)), qid
        for ctx in contexts:
            text, meta, emb = by_id[ctx["chunk_id"]]
            assert ctx["text"] == text and ctx["doc_id"] == meta["doc_id"] and ctx["title"] == meta.get("title")
            assert ctx["metadata"] == {k: str(v) for k, v in meta.items() if k not in RESERVED_METADATA_KEYS}
            q, e = vectors[qid], np.asarray(emb, dtype=np.float64)
            cosine = float(q @ e / (np.linalg.norm(q) * np.linalg.norm(e)))
            assert ctx["distance"] == pytest.approx(1 - cosine, abs=1e-4), (qid, ctx["chunk_id"])
        distances = [c["distance"] for c in contexts]
        assert distances == sorted(distances), qid
    assert answered["q04-rare"]["contexts"][0]["doc_id"] == "note-rare"  # the rare term finds its document


def test_extractive_rows_carry_lineage_latency_and_token_counts(baseline):
    assert len({r["created_at"] for r in baseline.rows}) == 1 and baseline.rows[0]["created_at"] is not None
    for row in baseline.rows:
        assert (row["run_id"], row["model_id"], row["embedding_model"], row["collection"], row["retrieval_mode"]) == (
            BASELINE_RUN, f"extractive:{MODEL}", MODEL, COLLECTION, "dense"), row["question_id"]
        assert row["latency_ms"] > 0 and row["prompt"] is None and row["history"] is None
    for qid, row in baseline.by_id.items():
        if qid in EMPTY:
            continue
        assert row["error"] is None and row["prompt_tokens"] > 0, qid
        # The answer is a sentence of one of the row's own contexts; an abstention costs no tokens.
        assert row["abstained"] or any(row["answer"] in c["text"] for c in row["contexts"]), qid
        assert (row["completion_tokens"] == 0) == row["abstained"], qid
    assert "regulates coolant flow" in baseline.by_id["q04-rare"]["answer"]
    assert "opens at six" in baseline.by_id["q05-bakery"]["answer"]


def test_unfiltered_rows_record_no_filters_and_near_duplicates_are_dropped(baseline):
    for qid, row in baseline.by_id.items():
        if qid in EMPTY:
            assert row["filters_json"] is None
            continue
        filters = json.loads(row["filters_json"])
        assert (filters["mode"], filters["vector_search"]) == ("dense", "ann") and "fusion" not in filters, qid
        assert filters["pre_query"] == {"where": None}, qid
        assert filters["in_query"] == {"where_document": None}, qid
        assert filters["post_query"]["max_distance"] is None and filters["post_query"]["max_chunks_per_doc"] is None
        assert filters["removed"]["fetched"] == 20 and filters["removed"]["top_k"] > 0, qid
    bakery = baseline.by_id["q05-bakery"]
    assert json.loads(bakery["filters_json"])["removed"]["dedupe"] >= 1
    assert len({c["doc_id"] for c in bakery["contexts"]} & {"note-dup-a", "note-dup-b"}) == 1


def test_offtopic_question_abstains(baseline):
    row = baseline.by_id[OFFTOPIC]
    assert (row["answer"], row["abstained"], row["error"]) == (ABSTAIN_TEXT, True, None)
    assert len(row["contexts"]) == TOP_K  # it had contexts: none was close enough to answer from
    others = [q for q in QUESTIONS if q not in EMPTY | {OFFTOPIC}]
    assert [q for q in others if baseline.by_id[q]["abstained"]] == []


def test_empty_and_null_questions_record_an_error_and_the_run_goes_on(baseline):
    for qid in EMPTY:
        row = baseline.by_id[qid]
        assert (row["error"], row["answer"], row["abstained"], row["contexts"]) == ("empty question", None, None, None)
    assert {q for q, r in baseline.by_id.items() if r["error"] is not None} == EMPTY


def test_runs_table_records_counts_and_abstention_rate(spark, indexed, baseline):
    abstained = sum(bool(r["abstained"]) for r in baseline.rows)
    record = baseline.record
    assert record["status"] == "succeeded" and record["model_id"] == f"extractive:{MODEL}"
    assert {k: record["counts"][k] for k in ("questions", "answers", "abstained", "errors")} == {
        "questions": len(QUESTIONS), "answers": len(QUESTIONS), "abstained": abstained, "errors": len(EMPTY)}
    assert record["counts"]["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in baseline.rows)
    assert record["metrics"]["abstention_rate"] == pytest.approx(abstained / len(QUESTIONS))
    assert record["metrics"]["latency_ms_p50"] > 0
    stored = [r for r in run_rows(spark, indexed.cfg, BASELINE_RUN)  # a rerun of the run id adds its own row
              if r["counts"] == record["counts"] and r["metrics"] == record["metrics"]]
    assert len(stored) == 1
    assert (stored[0]["job"], stored[0]["status"], stored[0]["embedding_model"]) == ("answer", "succeeded", MODEL)
    assert stored[0]["metrics"]["abstention_rate"] == pytest.approx(abstained / len(QUESTIONS))
    assert stored[0]["outputs"]["answers"].endswith("answers")


# -- filters: each proven against the unfiltered baseline ---------------------------------
def filter_checks(qid: str) -> dict[str, Callable[[dict[str, Any]], bool]]:
    """The stateless filters of the ``filtered`` run as predicates on one context of ``qid``."""
    _, lang, needle = QUESTIONS[qid]
    checks: dict[str, Callable[[dict[str, Any]], bool]] = {
        "where": lambda c: c["metadata"].get("source") == "wikipedia",
        "max_distance": lambda c: c["distance"] <= MAX_DISTANCE,
    }
    if lang:
        checks["where_columns"] = lambda c: c["metadata"].get("lang") == lang
    if needle:
        checks["where_document"] = lambda c: needle in c["text"]
    return checks


def passes(checks: dict[str, Callable], ctx: dict[str, Any], *, skip: str | None = None) -> bool:
    return all(check(ctx) for name, check in checks.items() if name != skip)


def test_filtered_contexts_pass_every_filter(filtered):
    for qid, row in filtered.by_id.items():
        if qid in EMPTY:
            continue
        checks = filter_checks(qid)
        assert all(passes(checks, c) for c in row["contexts"]), qid
        assert len({c["doc_id"] for c in row["contexts"]}) == len(row["contexts"]), qid  # max_chunks_per_doc=1
        assert [c["rank"] for c in row["contexts"]] == list(range(1, len(row["contexts"]) + 1))
    assert filtered.by_id[OFFTOPIC]["contexts"] == [] and filtered.by_id[OFFTOPIC]["answer"] == ABSTAIN_TEXT


def test_filtered_contexts_are_the_baseline_ones_that_pass(baseline, filtered):
    """The baseline contexts passing every filter, one per document, are where the filtered list starts."""
    for qid, row in filtered.by_id.items():
        if qid in EMPTY:
            continue
        expected = first_per_doc([c for c in baseline.by_id[qid]["contexts"] if passes(filter_checks(qid), c)])
        assert ids(row["contexts"])[: len(expected)] == ids(expected), qid
        for got, want in zip(row["contexts"], expected):
            assert got["distance"] == pytest.approx(want["distance"], abs=1e-5)


@pytest.mark.parametrize("name", ["where", "where_columns", "where_document", "max_distance", "max_chunks_per_doc"])
def test_each_filter_removes_a_context_the_baseline_had(baseline, filtered, name):
    """Some baseline context passes every other filter and would lead its document, yet is gone.

    (It ranked within top_k with nothing filtered, so it would rank within top_k with fewer
    candidates: only ``name`` can have removed it.)
    """
    proofs = []
    for qid, row in filtered.by_id.items():
        if qid in EMPTY:
            continue
        checks = filter_checks(qid)
        if name != "max_chunks_per_doc" and name not in checks:
            continue
        kept_docs: set[str] = set()
        for ctx in baseline.by_id[qid]["contexts"]:
            others_ok = passes(checks, ctx, skip=name)
            if name == "max_chunks_per_doc":
                hit = others_ok and ctx["doc_id"] in kept_docs
            else:
                hit = others_ok and not checks[name](ctx) and ctx["doc_id"] not in kept_docs
            if hit:
                proofs.append((qid, ctx["chunk_id"]))
                assert ctx["chunk_id"] not in ids(row["contexts"]), (name, qid)
            if passes(checks, ctx) if name == "max_chunks_per_doc" else others_ok:
                kept_docs.add(ctx["doc_id"])
    assert proofs, f"the corpus gives no case where {name} changes the contexts"


def test_filters_json_records_the_filters_applied(filtered):
    f = {q: json.loads(r["filters_json"]) for q, r in filtered.by_id.items() if q not in EMPTY}
    assert f["q02-chopin-fr"]["pre_query"]["where"] == {"$and": [{"source": "wikipedia"}, {"lang": {"$eq": "fr"}}]}
    assert f["q01-beyonce"]["pre_query"]["where"] == {"source": "wikipedia"}  # a null column adds no clause
    assert f["q03-grammy"]["in_query"]["where_document"] == {"$contains": "Grammy"}
    assert f["q01-beyonce"]["in_query"]["where_document"] is None
    for filters in f.values():
        assert filters["post_query"]["max_chunks_per_doc"] == 1
        assert filters["post_query"]["max_distance"] == MAX_DISTANCE
    assert f["q01-beyonce"]["removed"]["max_chunks_per_doc"] >= 1 and f["q06-ipod"]["removed"]["max_distance"] >= 1


# -- hybrid: the same filters, each context's retrievers recorded -----------------------------
def test_hybrid_run_applies_every_filter_and_records_retrievers(indexed, hybrid):
    assert hybrid.record["outputs"]["lexical_index"] == f"{indexed.cfg.lexical.path} (generation 1)"
    assert hybrid.record["outputs"]["shard_access"] == "partitioned (retrieval.shard_access=partitioned)"
    both = 0
    for qid, row in hybrid.by_id.items():
        if qid in EMPTY:
            continue
        assert row["retrieval_mode"] == "hybrid" and json.loads(row["filters_json"])["fusion"]["method"] == "zscore"
        checks = filter_checks(qid)
        assert all(passes(checks, c) for c in row["contexts"]), qid
        assert len({c["doc_id"] for c in row["contexts"]}) == len(row["contexts"]), qid
        scores = [c["fusion_score"] for c in row["contexts"]]
        assert scores == sorted(scores, reverse=True), qid
        for ctx in row["contexts"]:
            assert ctx["retrievers"] and set(ctx["retrievers"]) <= {"dense", "lexical"}, qid
            both += set(ctx["retrievers"]) == {"dense", "lexical"}
    assert both  # fused lists: contexts both retrievers found (lexical-only hits are unit-tested in test_hybrid)
    assert hybrid.by_id[OFFTOPIC]["contexts"] == []  # max_distance holds for BM25's hits too


def test_evaluation_compares_retrieval_modes_side_by_side(spark, indexed, baseline):
    """Through jobs/evaluate.py: every mode finds the rare-term document first, none finds a missing one."""
    from deltalake import DeltaTable

    from sparkrag.jobs.evaluate import run

    gold = {"q04-rare": "note-rare", "q07-offtopic": "no-such-document"}
    rows = [(qid, q, gold.get(qid)) for qid, (q, _, _) in QUESTIONS.items()]
    tables_of(spark, indexed.cfg).write(spark.createDataFrame(rows, "qid string, question string, gold_doc string"),
                                        "rag.gold_questions")
    report = indexed.root / "report-modes"
    result = run(job_args(indexed.root, "--questions", "rag.gold_questions", "--run-id", BASELINE_RUN,
                          "--gold-doc-column", "gold_doc", "--gold-answers-column", "", "--impossible-column", "",
                          "--ann-sample", "0", "--compare-modes", "dense,lexical,hybrid", "--ks", "1,5",
                          "--report-dir", str(report)), spark=spark)
    assert list(result["modes"]) == ["dense", "lexical", "hybrid"]
    for mode, figures in result["modes"].items():
        assert figures["queries"] == 2 and figures["queries_per_s"] > 0, mode
        assert (figures["recall@1"], figures["recall@5"], figures["mrr"]) == (0.5, 0.5, 0.5), mode
        assert result["metrics"][f"{mode}_recall@1"] == 0.5 and result["metrics"][f"{mode}_mrr"] == 0.5
    stored = DeltaTable(result["metrics_table"]).to_pandas()
    mine = stored[stored["eval_run_id"] == result["eval_run_id"]]
    assert set(mine[mine["metric"] == "hybrid_recall"]["k"]) == {1, 5}
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "## Retrieval modes" in text and all(f"| {m} | 0.5 | 0.5 | 0.5 |" in text for m in ("dense", "lexical"))
    with pytest.raises(Exception, match="--compare-modes"):
        run(job_args(indexed.root, "--compare-modes", "dense,bm25", "--ann-sample", "0"), spark=spark)


# -- exact mode and reruns ------------------------------------------------------------------
def test_exact_mode_returns_the_same_chunks_as_ann(baseline, exact_rerun):
    for qid, row in exact_rerun.by_id.items():
        ann = baseline.by_id[qid]
        assert ids(row["contexts"]) == ids(ann["contexts"]), qid
        for got, want in zip(row["contexts"] or [], ann["contexts"] or []):
            assert got["distance"] == pytest.approx(want["distance"], abs=1e-5)
            assert got["metadata"] == want["metadata"] and got["text"] == want["text"]
        assert row["answer"] == ann["answer"], qid
        assert (row["retrieval_mode"], row["collection"]) == ("dense", "exact:rag.chunks")


def test_rerun_with_the_same_run_id_replaces_rows(baseline, exact_rerun):
    assert exact_rerun.record["run_id"] == BASELINE_RUN
    assert sorted(r["question_id"] for r in exact_rerun.rows) == sorted(QUESTIONS)  # no duplicates
    for qid, row in exact_rerun.by_id.items():
        assert row["created_at"] > baseline.by_id[qid]["created_at"], qid


# -- ChatQA with the tiny Llama through jobs/answer.py -------------------------------------
def test_chatqa_prompt_holds_the_system_text_and_exactly_the_stored_contexts(baseline, chatqa, tiny_llama_path):
    from sparkrag.generation.prompt import SHORT_INSTRUCTION

    packed_fewer = 0
    for qid, row in chatqa.by_id.items():
        if row["error"] is not None:
            continue
        prompt, contexts, retrieved = row["prompt"], row["contexts"], baseline.by_id[qid]["contexts"]
        assert prompt.startswith(SYSTEM_PROMPT) and prompt.endswith("Assistant:"), qid
        assert f"{SHORT_INSTRUCTION} {QUESTIONS[qid][0]}" in prompt
        assert contexts and ids(contexts) == ids(retrieved)[: len(contexts)], qid  # the best ones, in order
        assert all(c["text"].strip() in prompt for c in contexts), qid
        if len(contexts) < len(retrieved):  # the next one did not fit and is not in the prompt
            packed_fewer += 1
            assert retrieved[len(contexts)]["text"].strip() not in prompt, qid
        assert (row["model_id"], row["embedding_model"], row["run_id"]) == (tiny_llama_path, MODEL, CHATQA_RUN)
    assert packed_fewer > 0, "max_prompt_tokens should force dropping contexts somewhere"
    assert chatqa.record["model_id"] == tiny_llama_path


def test_chatqa_token_counts_match_the_tokenizer(chatqa, tiny_tokenizer):
    answered = [r for r in chatqa.rows if r["error"] is None]
    assert len(answered) == len(QUESTIONS) - 3
    for row in answered:
        # What the model card feeds the model: BOS + the formatted prompt.
        expected = len(tiny_tokenizer(tiny_tokenizer.bos_token + row["prompt"], add_special_tokens=False)["input_ids"])
        assert row["prompt_tokens"] == expected <= MAX_PROMPT_TOKENS - MAX_NEW_TOKENS, row["question_id"]
        assert 1 <= row["completion_tokens"] <= MAX_NEW_TOKENS, row["question_id"]
        assert isinstance(row["answer"], str) and row["abstained"] is not None
    assert chatqa.record["counts"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in answered)


def test_chatqa_prompt_too_long_fails_only_its_row(chatqa):
    row = chatqa.by_id["q10-long"]
    assert row["error"].startswith("PromptTooLongError:") and "budget" in row["error"]
    assert (row["answer"], row["prompt"], row["prompt_tokens"], row["completion_tokens"]) == (None, None, None, None)
    assert {q for q, r in chatqa.by_id.items() if r["error"]} == EMPTY | {"q10-long"}
    assert chatqa.record["counts"]["errors"] == 3 and chatqa.record["status"] == "succeeded"


def test_resume_answers_only_questions_without_a_successful_answer(chatqa_resumed):
    before, after = chatqa_resumed
    assert set(before.by_id) == set(QUESTIONS) - set(RESUME_DELETED)
    retried = set(RESUME_DELETED) | EMPTY | {"q10-long"}  # deleted rows and rows with an error
    assert after.record["counts"]["questions"] == len(retried)
    assert sorted(r["question_id"] for r in after.rows) == sorted(QUESTIONS)  # one row each, no duplicates
    for qid, row in after.by_id.items():
        if qid in RESUME_DELETED:
            assert row["error"] is None and row["answer"] is not None and row["prompt_tokens"] > 0, qid
        elif qid in retried:
            assert row["created_at"] > before.by_id[qid]["created_at"] and row["error"], qid
        else:  # answered before: left alone
            assert row == before.by_id[qid], qid
    assert after.record["counts"]["answers"] == len(QUESTIONS)


# -- server mode and failures ---------------------------------------------------------------
@pytest.fixture(scope="module")
def server_run(spark, indexed, chroma_server) -> tuple[dict[str, Any], Run]:
    """The chunks table loaded into a ``chroma run`` server by the ingest job, then answered from it."""
    from sparkrag.pipelines.answer import run_answer
    from sparkrag.pipelines.ingest import run_ingest

    cfg = make_cfg(indexed.root, "chroma.mode=server", f"chroma.host={chroma_server.host}",
                   f"chroma.port={chroma_server.port}", "answer.run_id=answer-server")
    ingest = run_ingest(spark, cfg)
    return ingest, capture(spark, cfg, run_answer(spark, cfg))


def test_server_mode_answers_like_embedded(baseline, server_run, indexed):
    ingest, run = server_run
    assert ingest["counts"]["chunks_embedded"] == 0  # the table was already embedded: only Chroma was loaded
    assert ingest["counts"]["chroma_total"] == indexed.ingest["counts"]["chroma_total"]
    for qid, row in run.by_id.items():
        assert ids(row["contexts"]) == ids(baseline.by_id[qid]["contexts"]), qid
        for got, want in zip(row["contexts"] or [], baseline.by_id[qid]["contexts"] or []):
            assert got["distance"] == pytest.approx(want["distance"], abs=1e-5)
        assert (row["answer"], row["collection"]) == (baseline.by_id[qid]["answer"], COLLECTION)


def test_unreachable_server_fails_on_the_driver_naming_host_and_port(spark, indexed):
    from chroma_server import free_port

    from sparkrag.pipelines.answer import run_answer

    port = free_port()
    cfg = make_cfg(indexed.root, "chroma.mode=server", "chroma.host=127.0.0.1", f"chroma.port={port}",
                   "chroma.connect_retries=0", "answer.run_id=answer-unreachable")
    with pytest.raises(VectorStoreError, match=re.escape(f"127.0.0.1:{port}")):
        run_answer(spark, cfg)
    assert answer_rows(spark, cfg, "answer-unreachable") == []
    [failed] = run_rows(spark, cfg, "answer-unreachable")
    assert failed["status"] == "failed" and f"127.0.0.1:{port}" in failed["error"]
    assert "open_index" in failed["stage_seconds"]  # it failed opening the index,
    assert "retrieve_generate_write" not in failed["stage_seconds"]  # before any retrieval task


@pytest.mark.parametrize("override,named", [
    ("retrieval.where_columns={lang: no_such_column}", "'no_such_column' (option retrieval.where_columns.lang)"),
    ("retrieval.where_document_column=needle", "'needle' (option retrieval.where_document_column)"),
    ("questions.question=text", "'text' (option questions.question)"),
])
def test_missing_configured_column_fails_before_any_work(spark, indexed, baseline, override, named):
    from sparkrag.pipelines.answer import run_answer

    cfg = make_cfg(indexed.root, override, "answer.run_id=answer-missing-column")
    tables = tables_of(spark, cfg)
    version = tables.version(cfg.names.answers)
    with pytest.raises(SchemaError, match=re.escape(named)):
        run_answer(spark, cfg)
    assert tables.version(cfg.names.answers) == version


def test_help_lists_every_option(capsys):
    from job_cli import help_options

    from sparkrag.jobs.answer import SHORTCUTS, build_parser, main

    options = help_options(main, build_parser, capsys)
    assert {"--config", "--set", "--log-level", "--questions", "--answers-table", "--collection", "--chroma-path",
            "--generator", "--model", "--retrieval-mode", "--vector-search", "--run-id", "--resume", "--limit"} <= options
    assert {"--" + dest.replace("_", "-") for dest in SHORTCUTS} <= options


# -- slower variants ------------------------------------------------------------------------
@pytest.mark.slow
def test_snapshot_access_answers_like_the_shared_directory(spark, indexed, baseline):
    """Executors opening a shipped copy of the embedded directory (as on a cluster) find the same chunks."""
    from sparkrag.pipelines.answer import run_answer

    cfg = make_cfg(indexed.root, "answer.chroma_access=snapshot", "answer.run_id=answer-snapshot")
    run = capture(spark, cfg, run_answer(spark, cfg))
    for qid, row in run.by_id.items():
        assert ids(row["contexts"]) == ids(baseline.by_id[qid]["contexts"]), qid
