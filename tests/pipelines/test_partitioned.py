"""Partitioned retrieval (issue #13) returns what replicated retrieval returns, in every mode, with every filter.

Real local[2] Spark, Delta, embedded Chroma in 3 shards, the sharded BM25 index, MiniLM.
The corpus is 60 distinct Wikipedia paragraphs of the shipped sample (no two chunks tie on
distance or BM25 score for these questions). Each case runs the answer job's retrieval
stage (``plan_retrieval``) twice, ``retrieval.shard_access`` replicated and partitioned,
and compares every question's contexts: ids, ranks, distances, fusion scores, retrievers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparkrag.config import RagConfig, load_config
from sparkrag.pipelines.runs import RunRecorder

ROOT = Path(__file__).resolve().parents[2]
DOCS = [json.loads(line) for line in (ROOT / "resources/sample/documents.jsonl").read_text().splitlines()][:60]
QUESTIONS = [json.loads(line) for line in (ROOT / "resources/sample/questions.jsonl").read_text().splitlines()]
SHARDS = 3
FILTERS = ["retrieval.where={source: wikipedia}", "retrieval.where_columns={lang: q_lang}",
           "retrieval.where_document_column=q_needle", "retrieval.max_chunks_per_doc=1",
           "retrieval.max_distance=0.75", "retrieval.dedupe_similarity=0.97"]


def make_cfg(root: Path, *overrides: str) -> RagConfig:
    return load_config(RagConfig, None, [
        f"tables.root={root / 'tables'}", f"chroma.path={root / 'chroma'}", "chroma.collection=partitioned",
        f"chroma.shards={SHARDS}", "documents.metadata=[source, lang]", "chunking.max_tokens=96",
        "chunking.overlap_tokens=16", "questions.id=qid", "retrieval.top_k=5", "retrieval.fetch_k=12",
        "retrieval.query_batch_size=16", *overrides])


@pytest.fixture(scope="module")
def indexed(spark, tmp_path_factory):
    from sparkrag.delta import open_tables
    from sparkrag.pipelines.ingest import run_ingest

    root = tmp_path_factory.mktemp("partitioned")
    cfg = make_cfg(root)
    tables = open_tables(spark, cfg.tables)
    docs = [(d["doc_id"], d["title"], d["text"], "wikipedia" if i % 5 else "notes", "en" if i % 3 else "de")
            for i, d in enumerate(DOCS)]
    tables.write(spark.createDataFrame(docs, "doc_id string, title string, text string, source string, lang string"),
                 cfg.names.documents)
    record = run_ingest(spark, cfg)
    assert record["counts"]["chroma_shards"] == SHARDS and record["counts"]["lexical_shards"] == SHARDS
    needles = [None, "the", None, "was", None, "zzzz-nowhere"]
    questions = [(f"q{i:02d}", q["question"], None if i % 4 else "en", needles[i % len(needles)])
                 for i, q in enumerate(QUESTIONS)]
    questions.append(("q-empty", "  ", None, None))
    questions.append(("q-badfilter", "Who?", "en", None))
    return root, spark.createDataFrame(questions, "qid string, question string, q_lang string, q_needle string")


def contexts(spark, root: Path, questions, *overrides: str) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from sparkrag.delta import open_tables
    from sparkrag.pipelines.answer_retrieval import plan_retrieval

    cfg = make_cfg(root, *overrides)
    rec = RunRecorder("answer", cfg, "test-partitioned")
    rec.counts["questions"] = questions.count()
    retrieval = plan_retrieval(spark, open_tables(spark, cfg.tables), cfg, rec, 384)
    todo = questions.select(F.col("qid").alias("question_id"), "question",
                            F.lit(None).cast("array<struct<role:string,content:string>>").alias("history"),
                            F.col("q_lang").alias("_f_q_lang"), F.col("q_needle").alias("_f_q_needle"))
    try:
        rows = retrieval(todo).collect()
    finally:
        retrieval.close()
    out = {r["question_id"]: (r["error"], [c.asDict(recursive=True) for c in r["contexts"] or []],
                              json.loads(r["filters_json"]) if r["filters_json"] else None) for r in rows}
    out["_access"] = rec.outputs["shard_access"]
    return out


def assert_same(replicated: dict[str, Any], partitioned: dict[str, Any]) -> None:
    assert replicated.pop("_access").startswith("replicated")
    assert partitioned.pop("_access").startswith("partitioned")
    assert set(replicated) == set(partitioned)
    found = 0
    for qid, (error, ctxs, filters) in replicated.items():
        p_error, p_ctxs, p_filters = partitioned[qid]
        assert (error is None) == (p_error is None), (qid, error, p_error)
        assert [c["chunk_id"] for c in ctxs] == [c["chunk_id"] for c in p_ctxs], qid
        for a, b in zip(ctxs, p_ctxs):
            assert a["rank"] == b["rank"] and a["retrievers"] == b["retrievers"] and a["text"] == b["text"], qid
            assert a["metadata"] == b["metadata"] and a["doc_id"] == b["doc_id"] and a["title"] == b["title"]
            assert a["distance"] == pytest.approx(b["distance"], abs=1e-6), qid
            assert (a["fusion_score"] is None) == (b["fusion_score"] is None)
            if a["fusion_score"] is not None:
                assert a["fusion_score"] == pytest.approx(b["fusion_score"], abs=1e-6), qid
        assert filters == p_filters, qid
        found += len(ctxs)
    assert found > 50  # the comparison covered real contexts


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize("filtered", [False, True], ids=["unfiltered", "filtered"])
def test_partitioned_returns_the_replicated_contexts(spark, indexed, mode, filtered):
    root, questions = indexed
    sets = [f"retrieval.mode={mode}", *(FILTERS if filtered else [])]
    replicated = contexts(spark, root, questions, *sets, "retrieval.shard_access=replicated")
    partitioned = contexts(spark, root, questions, *sets, "retrieval.shard_access=partitioned")
    assert partitioned["q-empty"][0] == replicated["q-empty"][0] == "empty question"
    assert_same(replicated, partitioned)


def test_exact_search_is_partitioned_and_finds_what_ann_finds(spark, indexed):
    root, questions = indexed
    ann = contexts(spark, root, questions, "retrieval.shard_access=replicated")
    exact = contexts(spark, root, questions, "retrieval.vector_search=exact", *FILTERS[:3])
    assert exact.pop("_access") == "partitioned (exact search)"
    filtered_ann = contexts(spark, root, questions, *FILTERS[:3], "retrieval.shard_access=replicated")
    filtered_ann.pop("_access")
    for qid, (error, ctxs, _) in filtered_ann.items():
        if qid.startswith("q"):
            assert [c["chunk_id"] for c in exact[qid][1]] == [c["chunk_id"] for c in ctxs], qid
    assert ann["q01"][1] and exact["q01"][2]["vector_search"] == "exact"


def test_auto_picks_by_index_size_against_memory(spark, indexed):
    from sparkrag.pipelines.answer_retrieval import choose_access, memory_bytes

    assert memory_bytes("1g") == 2**30 and memory_bytes("512m") == 2**29 and memory_bytes("2048") == 2048
    access, why = choose_access(spark, "auto", 3, 10)
    assert access == "replicated" and "fits in 25%" in why
    access, why = choose_access(spark, "auto", 3, 2**50)
    assert access == "partitioned" and "exceeds 25%" in why
    assert choose_access(spark, "auto", 1, 2**50)[0] == "replicated"  # one shard: nothing to partition
    assert choose_access(spark, "partitioned", 1, 0) == ("partitioned", "retrieval.shard_access=partitioned")
    root, questions = indexed
    assert contexts(spark, root, questions.limit(3))["_access"].startswith("replicated (auto: the index")


def test_deltas_read_alike_in_every_access(spark, indexed, tmp_path, monkeypatch):
    """An incremental ingest that writes deltas (Chroma and BM25 shards, from one diff of the table against their
    bases): partitioned workers, replicated workers reading in place and workers reading shipped snapshots return
    the same contexts."""
    import shutil

    from sparkrag.delta import open_tables
    from sparkrag.index import shard_jobs
    from sparkrag.pipelines.ingest import run_ingest

    diffs = []
    monkeypatch.setattr(shard_jobs, "_diff_rows", lambda *a, _f=shard_jobs._diff_rows: diffs.append(1) or _f(*a))

    src, questions = indexed
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    cfg = make_cfg(root, "chroma.compact_at=0.5")
    changed, dropped = {d["doc_id"] for d in DOCS[:6]}, {d["doc_id"] for d in DOCS[6:9]}
    docs = [(d["doc_id"], d["title"], d["text"] + (" zephyrine valve" if d["doc_id"] in changed else ""),
             "wikipedia" if i % 5 else "notes", "en" if i % 3 else "de")
            for i, d in enumerate(DOCS) if d["doc_id"] not in dropped]
    open_tables(spark, cfg.tables).write(spark.createDataFrame(
        docs, "doc_id string, title string, text string, source string, lang string"), cfg.names.documents,
        mode="overwrite")
    counts = run_ingest(spark, cfg)["counts"]
    assert counts["chroma_shards_delta"] > 0 and counts["lexical_shards_delta"] > 0
    assert len(diffs) == 1  # the BM25 sync reused the Chroma sync's diff: their bases hold the same pairs
    assert counts["lexical_tokenized"] < counts["chroma_total"] / 2  # only the changed documents' chunks
    sets = ["retrieval.mode=hybrid", *FILTERS]
    replicated = contexts(spark, root, questions, *sets, "retrieval.shard_access=replicated")
    shipped = contexts(spark, root, questions, *sets, "retrieval.shard_access=replicated",
                       "answer.chroma_access=snapshot")
    assert shipped == replicated
    assert_same(replicated, contexts(spark, root, questions, *sets, "retrieval.shard_access=partitioned"))
    zephyrine = contexts(spark, root, questions.limit(1).selectExpr("qid", "'zephyrine valve' AS question",
                                                                      "CAST(NULL AS STRING) AS q_lang",
                                                                      "CAST(NULL AS STRING) AS q_needle"),
                         "retrieval.mode=lexical")
    found = {c["doc_id"] for c in zephyrine[next(k for k in zephyrine if k != "_access")][1]}
    assert found and found <= changed  # the new text is searchable, from the BM25 deltas
