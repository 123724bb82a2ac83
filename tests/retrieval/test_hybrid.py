"""Hybrid retrieval: BM25 (bm25s) and dense (MiniLM) fused, with the same filters in every mode.

Real all-MiniLM-L6-v2 vectors, a real embedded Chroma collection and the exact index over
the same chunks, a real bm25s index. The corpus: 40 sample paragraphs, four near-identical
assembly notes that differ by a part code, and one note only a paraphrase reaches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparkrag.config import ChromaConfig, EncoderConfig, LexicalConfig, RagConfig, RetrievalConfig, load_config
from sparkrag.errors import ConfigError, VectorStoreError
from sparkrag.index.exact import ExactIndex, distances
from sparkrag.index.where import filter_mask
from sparkrag.retrieval.fusion import fuse_rankings
from sparkrag.index.lexical import LexicalIndex
from sparkrag.retrieval.search import retrieve_contexts

pytestmark = pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = [json.loads(line) for line in (ROOT / "resources/sample/documents.jsonl").open(encoding="utf-8")]
NOTES = [
    ("note-1130", "Bracket ZQ-1130 is fastened with four bolts to the rear frame of the cabinet."),
    ("note-2271", "Bracket ZQ-2271 is fastened with four bolts to the front frame of the cabinet."),
    ("note-3307", "Bracket ZQ-3307 is fastened with four screws to the left frame of the cabinet."),
    ("note-8841", "Bracket ZQ-8841 is welded to the steel base plate under the lowest drawer."),
    ("doctor-visit", "The physician prescribed medication to relieve the patient's persistent cough."),
]
RARE_Q = "Which frame holds bracket ZQ-8841?"  # only the code tells note-8841 from its three near-twins
PARAPHRASE_Q = "What remedy did the doctor suggest for the sick fellow's chest complaint?"  # no shared stem
TOP_K = 3
MODES = ("dense", "lexical", "hybrid")


@pytest.fixture(scope="module")
def indexes(minilm_path, tmp_path_factory):
    from sparkrag.embed import make_encode_fn
    from sparkrag.index.vectorstore import open_client, open_collection, upsert_chunks

    docs = [(d["doc_id"], "wiki", d["text"][:600]) for d in SAMPLE[::6][:40]]
    docs += [(doc_id, "notes", text) for doc_id, text in NOTES]
    ids = [f"{d}:0" for d, _, _ in docs]
    texts = [t for _, _, t in docs]
    metas = [{"doc_id": d, "chunk_index": 0, "source": s} for d, s, _ in docs]
    vectors = make_encode_fn(EncoderConfig(model=minilm_path), role="passage")()(texts)
    chroma_cfg = ChromaConfig(path=str(tmp_path_factory.mktemp("hybrid-chroma")), collection="hybrid")
    collection = open_collection(open_client(chroma_cfg), chroma_cfg, embedding_model="minilm", dim=384, create=True)
    upsert_chunks(collection, ids, vectors, texts, metas)
    encode = make_encode_fn(EncoderConfig(model=minilm_path), role="query")()
    return {"exact": ExactIndex(ids, vectors, texts, metas, "cosine"), "chroma": collection,
            "lexical": LexicalIndex.build(ids, texts, metas, LexicalConfig()), "encode": encode, "texts": texts,
            "metas": metas, "ids": ids}


def retrieve(indexes, questions, *, vector="exact", rows=None, **settings):
    cfg = RetrievalConfig(**{"top_k": TOP_K, "fetch_k": 10, "dedupe_similarity": None, **settings})
    contexts, lineage = retrieve_contexts(rows or [{}] * len(questions), indexes["encode"](questions), cfg=cfg,
                                          index=indexes[vector], lexical=indexes["lexical"], query_texts=questions,
                                          space="cosine")
    return contexts, [json.loads(x) for x in lineage]


def docs_of(contexts):
    return [c["doc_id"] for c in contexts]


@pytest.mark.parametrize("vector", ["exact", "chroma"])
def test_rare_term_is_found_by_lexical_and_hybrid_not_dense(indexes, vector):
    found = {mode: docs_of(retrieve(indexes, [RARE_Q], vector=vector, mode=mode)[0][0]) for mode in MODES}
    assert found["lexical"][0] == "note-8841", found
    assert "note-8841" in found["hybrid"], found
    assert "note-8841" not in found["dense"] and set(found["dense"]) <= {"note-1130", "note-2271", "note-3307"}, found


@pytest.mark.parametrize("vector", ["exact", "chroma"])
def test_paraphrase_is_found_by_dense_and_hybrid_not_lexical(indexes, vector):
    found = {mode: docs_of(retrieve(indexes, [PARAPHRASE_Q], vector=vector, mode=mode)[0][0]) for mode in MODES}
    assert found["dense"][0] == "doctor-visit", found
    assert "doctor-visit" in found["hybrid"], found
    assert "doctor-visit" not in found["lexical"] and found["lexical"], found  # BM25 returns other chunks


def test_contexts_record_their_retrievers_ranks_and_true_distances(indexes):
    questions = [RARE_Q, PARAPHRASE_Q, "When was the first iPod released?"]
    wide = {"top_k": 10, "fetch_k": 10}
    single = {mode: retrieve(indexes, questions, mode=mode, **wide)[0] for mode in ("dense", "lexical")}
    hybrid, lineage = retrieve(indexes, questions, mode="hybrid", **wide)
    q = indexes["encode"](questions)
    for i, contexts in enumerate(hybrid):
        rank_in = {mode: {c["chunk_id"]: c["rank"] for c in single[mode][i]} for mode in single}
        for ctx in contexts:
            assert ctx["retrievers"] and set(ctx["retrievers"]) <= {"dense", "lexical"}
            for mode, rank in ctx["retrievers"].items():  # the rank each retriever gave it on its own
                assert rank_in[mode][ctx["chunk_id"]] == rank, (i, ctx["chunk_id"], mode)
            for mode in set(rank_in) - set(ctx["retrievers"]):
                assert ctx["chunk_id"] not in rank_in[mode]
            row = indexes["ids"].index(ctx["chunk_id"])  # lexical-only hits carry their true vector distance
            assert ctx["distance"] == pytest.approx(distances(q[i], indexes["exact"].embeddings[[row]], "cosine")[0, 0],
                                                    abs=1e-5)
        scores = [c["fusion_score"] for c in contexts]
        assert scores == sorted(scores, reverse=True) and [c["rank"] for c in contexts] == list(range(1, 11))
        assert lineage[i]["mode"] == "hybrid" and lineage[i]["fusion"] == {
            "method": "zscore", "rrf_k": 60, "weights": {"dense": 1.0, "lexical": 1.0}}
        assert lineage[i]["post_query"]["doc_aggregation"] == "none"
    for mode, found in single.items():
        assert all(c["retrievers"] == {mode: c["rank"]} and c["fusion_score"] is None for cs in found for c in cs)


@pytest.mark.parametrize("vector, options", [("exact", {}), ("chroma", {}), ("chroma", {"fusion": "rrf"}),
                                             ("chroma", {"doc_aggregation": "sum", "fusion": "weighted"})])
def test_filters_hold_in_every_mode(indexes, vector, options):
    where, where_document = {"source": "notes"}, {"$contains": "cabinet"}
    rows = [{"src": "notes"}, {"src": "wiki"}]
    questions = [RARE_Q, "Which bracket is fastened with four screws?"]
    for mode in MODES:
        static, _ = retrieve(indexes, questions, vector=vector, mode=mode, where=where, where_document=where_document,
                             **options)
        per_row, lineage = retrieve(indexes, questions, vector=vector, mode=mode, rows=rows,
                                    where_columns={"source": "src"}, **options)
        for contexts in static:
            passing = filter_mask([c["metadata"] | {"doc_id": c["doc_id"]} for c in contexts],
                                  [c["text"] for c in contexts], where, where_document)
            assert contexts and passing.all(), (mode, docs_of(contexts))
        assert all(c["metadata"]["source"] == "notes" for c in per_row[0]) and per_row[0], mode
        assert all(c["metadata"]["source"] == "wiki" for c in per_row[1]) and per_row[1], mode
        assert lineage[1]["pre_query"]["where"] == {"source": {"$eq": "wiki"}}


def test_filtered_lexical_search_is_the_unfiltered_ranking_restricted(indexes):
    lexical, where = indexes["lexical"], {"source": "wiki"}
    question = "When was the first iPod released and how many songs did it hold?"
    everything = lexical.query([question], n_results=len(lexical))
    keep = [cid for cid, meta in zip(everything["ids"][0], everything["metadatas"][0]) if meta["source"] == "wiki"]
    assert lexical.query([question], n_results=5, where=where)["ids"][0] == keep[:5]
    assert lexical.query([question], n_results=5, where_document={"$contains": "ZQ-"})["ids"][0] == []


def test_post_filters_apply_after_fusion(indexes):
    loose, _ = retrieve(indexes, [PARAPHRASE_Q], mode="lexical", top_k=10)
    assert max(c["distance"] for c in loose[0]) > 0.8  # BM25's hits for a paraphrase are far in vector space
    tight, lineage = retrieve(indexes, [PARAPHRASE_Q], mode="lexical", top_k=10, max_distance=0.8)
    assert [c["chunk_id"] for c in tight[0]] == [c["chunk_id"] for c in loose[0] if c["distance"] <= 0.8]
    assert lineage[0]["removed"]["max_distance"] == len(loose[0]) - len(tight[0])
    per_doc, _ = retrieve(indexes, [RARE_Q], mode="hybrid", top_k=10, max_chunks_per_doc=1)
    assert len(docs_of(per_doc[0])) == len(set(docs_of(per_doc[0])))


def test_lexical_hit_missing_from_the_vector_index_is_an_error(indexes):
    partial = ExactIndex(indexes["ids"][:-5], indexes["exact"].embeddings[:-5], indexes["texts"][:-5],
                         indexes["metas"][:-5], "cosine")
    indexes = {**indexes, "partial": partial}
    with pytest.raises(VectorStoreError, match="not in the vector index.*rerun the ingest job"):
        retrieve(indexes, [RARE_Q], vector="partial", mode="hybrid")


def test_lexical_index_roundtrip_and_edge_cases(indexes, tmp_path):
    lexical = indexes["lexical"]
    lexical.save(str(tmp_path / "v"))
    loaded = LexicalIndex.load(str(tmp_path / "v"))
    questions = [RARE_Q, "cough medication", "the of and"]  # the last is only stopwords: no hit
    assert loaded.query(questions, n_results=5) == lexical.query(questions, n_results=5)
    assert lexical.query(questions, n_results=5)["ids"][2] == []
    empty = LexicalIndex.build([], [], [], LexicalConfig())
    assert empty.query(["anything"], n_results=3)["ids"] == [[]]
    empty.save(str(tmp_path / "e"))
    assert LexicalIndex.load(str(tmp_path / "e")).query(["x"], n_results=1)["ids"] == [[]]
    with pytest.raises(VectorStoreError, match="missing, incomplete or outdated"):
        LexicalIndex.load(str(tmp_path / "nothing"))


def test_fusion_methods_and_config_errors():
    rankings = {"dense": [("a", -0.1), ("b", -0.2), ("c", -0.9)], "lexical": [("c", 12.0), ("b", 3.0)]}
    rrf = fuse_rankings(rankings, k=60)
    assert [cid for cid, _, _ in rrf] == ["c", "b", "a"]  # 1/63 + 1/61 > 2/62 > 1/61
    assert rrf[1][1] == pytest.approx(2 / 62) and rrf[1][2] == {"dense": 2, "lexical": 2}
    assert rrf[0][2] == {"dense": 3, "lexical": 1} and rrf[2][2] == {"dense": 1}
    weighted = fuse_rankings(rankings, method="weighted", weights={"dense": 1.0, "lexical": 2.0})
    scores = {cid: s for cid, s, _ in weighted}
    assert scores == pytest.approx({"a": 1.0, "b": 0.875, "c": 2.0})  # min-max scaled per list
    assert fuse_rankings({"dense": [("a", 0.0)]}, weights={"dense": 0.0})[0][1] == 0.0
    with pytest.raises(ConfigError, match="retrieval.weights: unknown retriever"):
        fuse_rankings(rankings, weights={"sparse": 1.0})
    with pytest.raises(ConfigError, match="retrieval.mode: .*'ann'.*retrieval.vector_search"):
        retrieve_contexts([{}], np.zeros((1, 4)), cfg=RetrievalConfig(mode="ann"), index=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="retrieval.mode: expected one of"):
        load_config(RagConfig, None, ["retrieval.mode=bm25"])
    with pytest.raises(ConfigError, match="retrieval.mode='lexical' needs the lexical index"):
        retrieve_contexts([{}], np.zeros((1, 4)), cfg=RetrievalConfig(mode="lexical"),
                          index=ExactIndex(["a"], np.ones((1, 4)), ["t"], [{"doc_id": "d"}], "cosine"))
