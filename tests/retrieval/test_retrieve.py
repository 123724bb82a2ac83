"""retrieve: exact vs Chroma (same filters, same distances), pre/in/post-query filters, re-ranking.

Real ChromaDB (embedded), real all-MiniLM-L6-v2 embeddings, a tiny random BERT cross-encoder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparkrag.config import ChromaConfig, RetrievalConfig
from sparkrag.errors import ConfigError, ModelContractError, SchemaError
from sparkrag.index.exact import ExactIndex
from sparkrag.index.where import check_where, check_where_document
from sparkrag.retrieval.filters import build_where, build_where_document
from sparkrag.retrieval.rerank import make_rerank_fn
from sparkrag.retrieval.search import apply_post_filters, check_retrieval_config, filters_description, retrieve_contexts, search
from sparkrag.index.vectorstore import open_client, open_collection, to_chroma_metadata, upsert_chunks

# embedding_function=None is stored as a "legacy" config; reading `configuration` warns.
pytestmark = pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")

# (doc_id, title, source, text): several chunks per document, one exact and one near duplicate
CORPUS = [
    ("delta", "Delta Lake", "wiki", "Delta Lake is an open storage layer that brings ACID transactions to data lakes."),
    ("delta", "Delta Lake", "wiki", "Delta tables keep a transaction log so readers see consistent snapshots."),
    ("delta", "Delta Lake", "wiki", "Time travel in Delta Lake lets you query an older version of a table."),
    ("delta", "Delta Lake", "wiki", "The Delta transaction log records every commit as a JSON file."),
    ("delta-blog", "Delta tips", "blog", "Delta Lake is an open storage layer that brings ACID transactions to data lakes."),
    ("delta-blog", "Delta tips", "blog", "Run OPTIMIZE on Delta tables to compact many small files."),
    ("spark", "Apache Spark", "wiki", "Apache Spark is a distributed engine for large-scale data processing."),
    ("spark", "Apache Spark", "wiki", "Spark executors run tasks in parallel across a cluster of machines."),
    ("spark", "Apache Spark", "wiki", "Pandas UDFs in Spark exchange data with Python through Apache Arrow."),
    ("spark-blog", "Spark tuning", "blog", "Too many shuffle partitions slow down small Spark jobs."),
    ("spark-blog", "Spark tuning", "blog", "Caching a DataFrame in Spark avoids recomputing it for every action."),
    ("chroma", "ChromaDB", "wiki", "ChromaDB is an open-source vector database for embeddings."),
    ("chroma", "ChromaDB", "wiki", "Chroma collections store documents, metadata and embedding vectors."),
    ("chroma", "ChromaDB", "wiki", "Chroma uses an HNSW index for approximate nearest neighbour search."),
    ("chroma", "ChromaDB", "wiki", "Chroma uses an HNSW index for approximate nearest-neighbour search!"),
    ("bread", "Baking bread", "blog", "Sourdough bread needs a lively starter and a long slow rise."),
    ("bread", "Baking bread", "blog", "Bake the loaf in a very hot oven with steam for a crisp crust."),
    ("bread", "Baking bread", "blog", "Knead the dough until it is smooth and elastic."),
    ("football", "Football", "wiki", "A football match lasts ninety minutes plus stoppage time."),
    ("football", "Football", "wiki", "The goalkeeper is the only player allowed to handle the ball."),
    ("football", "Football", "wiki", "A penalty kick is taken from eleven metres."),
    ("garden", "Gardening", "blog", "Tomatoes need full sun and regular watering to ripen."),
    ("garden", "Gardening", "blog", "Compost improves the structure of clay soil."),
    ("garden", "Gardening", "blog", "Prune roses in late winter before new growth starts."),
]
QUESTIONS = [
    "What does Delta Lake add to a data lake?",
    "How does Spark run work in parallel?",
    "Which index does Chroma use for nearest neighbour search?",
    "How do I get a crisp crust on bread?",
    "How long is a football match?",
    "What do tomato plants need?",
    "How can I query an old version of a Delta table?",
    "What is a vector database?",
]


@pytest.fixture(scope="session")
def minilm_embed(minilm_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()

    def embed(texts: list[str]) -> np.ndarray:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    return embed


@pytest.fixture(scope="session")
def corpus(minilm_embed):
    ids = [f"{doc}-{i:02d}" for i, (doc, *_rest) in enumerate(CORPUS)]
    docs = [text for *_rest, text in CORPUS]
    metas = [to_chroma_metadata(doc, i, title, {"source": source}) for i, (doc, title, source, _t) in enumerate(CORPUS)]
    # scaled so that ip and l2 differ from cosine (MiniLM vectors are unit length)
    scale = np.random.default_rng(7).uniform(0.5, 2.0, size=(len(CORPUS), 1)).astype(np.float32)
    return ids, minilm_embed(docs) * scale, docs, metas


@pytest.fixture(scope="session")
def questions(minilm_embed):
    return minilm_embed(QUESTIONS)


@pytest.fixture(scope="session")
def chroma_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("retrieve-chroma"))


def load(chroma_root, name, space, ids, vectors, docs, metas):
    cfg = ChromaConfig(path=chroma_root, collection=name, space=space)
    col = open_collection(open_client(cfg), cfg, embedding_model="minilm", dim=vectors.shape[1], create=True)
    upsert_chunks(col, ids, vectors, docs, metas, replace=False)
    return col


@pytest.fixture(scope="session")
def collections(chroma_root, corpus):
    return {space: load(chroma_root, f"corpus-{space}", space, *corpus) for space in ("cosine", "ip", "l2")}


@pytest.fixture(scope="session")
def exact(corpus):
    return {space: ExactIndex(*corpus, space=space) for space in ("cosine", "ip", "l2")}


def ids_of(results):
    return [[c.chunk_id for c in cands] for cands in results]


@pytest.mark.parametrize("space", ["cosine", "ip", "l2"])
def test_exact_matches_chroma_top_k_and_distances(collections, exact, questions, space):
    cfg = RetrievalConfig(fetch_k=8, top_k=8)
    ann = search(collections[space], questions, cfg=cfg)
    ex = search(exact[space], questions, cfg=cfg)
    for a, e in zip(ann, ex):
        np.testing.assert_allclose([c.distance for c in a], [c.distance for c in e], atol=1e-5)
        # same chunks at the same distances; ties (the duplicated text) may come in either order
        exact_distance = {c.chunk_id: c.distance for c in e}
        assert {c.chunk_id for c in a} == set(exact_distance)
        np.testing.assert_allclose([exact_distance[c.chunk_id] for c in a], [c.distance for c in a], atol=1e-5)
    # the spaces really differ: ip and l2 see the per-vector scale, cosine does not
    assert ids_of(search(exact["cosine"], questions, cfg=cfg)) != ids_of(search(exact[space], questions, cfg=cfg)) \
        or space == "cosine"


# Metadata of every type and some keys missing, to pin down Chroma's typed comparisons.
FILTER_METAS = [{"n": 1, "s": "a", "b": True}, {"n": 2.5, "s": "b"}, {"s": "a"}, {"n": "1", "b": False},
                {"n": True}, {"n": 0, "s": "c"}, {"n": 3, "s": "b", "b": True}, {}, {"n": -1.5, "s": "a"},
                {"n": 1.0, "s": "d"}]
FILTER_DOCS = ["Hello world", "hello World", "abc", "Delta lake", "x", "lake house", "Hé ünïcode", "world cup",
               "the lake", "Delta Lake"]
WHERES = [{"n": 1}, {"n": 1.0}, {"n": {"$ne": 1}}, {"n": {"$gt": 1}}, {"n": {"$gte": 1}}, {"n": {"$lt": 1}},
          {"n": {"$lte": 0}}, {"n": True}, {"n": {"$ne": True}}, {"n": "1"}, {"s": {"$ne": "a"}},
          {"n": {"$in": [1, 3]}}, {"n": {"$nin": [1, 3]}}, {"s": {"$in": ["a", "b"]}}, {"s": {"$nin": ["a"]}},
          {"b": {"$eq": False}}, {"$and": [{"s": "a"}, {"n": {"$gt": 0}}]},
          {"$or": [{"s": "d"}, {"n": {"$lt": 0}}, {"b": True}]},
          {"$and": [{"$or": [{"s": "a"}, {"s": "b"}]}, {"n": {"$ne": 1}}]}]
WHERE_DOCS = [{"$contains": "world"}, {"$contains": "World"}, {"$not_contains": "lake"}, {"$contains": "ü"},
              {"$and": [{"$contains": "l"}, {"$not_contains": "o"}]}, {"$or": [{"$contains": "abc"}, {"$contains": "cup"}]},
              {"$regex": "^[Hh]ello"}, {"$not_regex": "[Ll]ake$"}]


@pytest.fixture(scope="session")
def filter_indexes(chroma_root):
    n = len(FILTER_METAS)
    vecs = np.random.default_rng(3).normal(size=(n, 8)).astype(np.float32)
    ids = [f"f{i}" for i in range(n)]
    client = open_client(ChromaConfig(path=chroma_root))
    col = client.get_or_create_collection("filters", embedding_function=None)
    col.add(ids=ids, embeddings=vecs, documents=FILTER_DOCS, metadatas=[m or None for m in FILTER_METAS])
    return col, ExactIndex(ids, vecs, FILTER_DOCS, FILTER_METAS, "l2"), vecs


@pytest.mark.parametrize("where", WHERES, ids=json.dumps)
def test_where_semantics_identical_to_chroma(filter_indexes, where):
    col, exact, vecs = filter_indexes
    check_where(where)
    got = exact.query(vecs[:2], n_results=len(FILTER_METAS), where=where)
    want = col.query(query_embeddings=vecs[:2], n_results=len(FILTER_METAS), where=where, include=["distances"])
    assert got["ids"] == want["ids"]


@pytest.mark.parametrize("where_document", WHERE_DOCS, ids=json.dumps)
def test_where_document_semantics_identical_to_chroma(filter_indexes, where_document):
    col, exact, vecs = filter_indexes
    check_where_document(where_document)
    got = exact.query(vecs[:2], n_results=len(FILTER_METAS), where_document=where_document)
    want = col.query(query_embeddings=vecs[:2], n_results=len(FILTER_METAS), where_document=where_document,
                     include=["distances"])
    assert got["ids"] == want["ids"]
    assert 0 < len(got["ids"][0]) < len(FILTER_METAS)


@pytest.mark.parametrize("where", [{"a": 1, "b": 2}, {"$and": [{"a": 1}]}, {"a": {"$gt": "2"}}, {"a": {"$in": []}},
                                   {"a": {"$in": [1, "1"]}}, {"a": {"$gt": True}}, {"a": {"$like": 1}}, {"$not": [1]}])
def test_where_chroma_rejects_is_a_config_error(filter_indexes, where):
    col, _, vecs = filter_indexes
    with pytest.raises(ConfigError, match=r"retrieval\.where"):
        check_where(where)
    with pytest.raises(Exception):
        col.query(query_embeddings=vecs[:1], n_results=1, where=where)


def test_where_document_rejects():
    for bad in ({"$contains": ""}, {"$and": [{"$contains": "a"}]}, {"$has": "x"}, {"$contains": 3}):
        with pytest.raises(ConfigError, match=r"retrieval\.where_document"):
            check_where_document(bad)


def test_build_where_merges_static_and_per_row():
    cfg = RetrievalConfig(where={"source": "wiki"}, where_columns={"title": "topic", "doc_id": "doc"})
    assert build_where(cfg, {"topic": "Delta Lake", "doc": None}) == {
        "$and": [{"source": "wiki"}, {"title": {"$eq": "Delta Lake"}}]}
    assert build_where(cfg, {"topic": None, "doc": float("nan")}) == {"source": "wiki"}
    assert build_where(RetrievalConfig(), {}) is None
    nested = RetrievalConfig(where={"$and": [{"a": 1}, {"b": 2}]}, where_columns={"c": "c"})
    assert build_where(nested, {"c": np.int64(3)}) == {"$and": [{"a": 1}, {"b": 2}, {"c": {"$eq": 3}}]}
    with pytest.raises(SchemaError, match="retrieval.where_columns.title: the questions have no column 'topic'"):
        build_where(cfg, {"doc": "x"})
    with pytest.raises(ConfigError, match=r"retrieval\.where"):
        build_where(RetrievalConfig(where={"a": 1, "b": 2}), {})
    with pytest.raises(ConfigError, match=r"retrieval\.where_columns\.title"):
        build_where(RetrievalConfig(where_columns={"title": "t"}), {"t": [1, 2]})


def test_build_where_document_merges_static_and_per_row():
    cfg = RetrievalConfig(where_document={"$not_contains": "blog"}, where_document_column="must")
    assert build_where_document(cfg, {"must": "Delta"}) == {
        "$and": [{"$not_contains": "blog"}, {"$contains": "Delta"}]}
    assert build_where_document(cfg, {"must": None}) == {"$not_contains": "blog"}
    assert build_where_document(cfg, {"must": ""}) == {"$not_contains": "blog"}
    with pytest.raises(ConfigError, match=r"retrieval\.where_document"):
        build_where_document(RetrievalConfig(where_document={"$contains": ""}), {})


def test_config_checks_name_the_option():
    for kwargs, name in [({"top_k": 0}, "top_k"), ({"top_k": 5, "fetch_k": 3}, "fetch_k"),
                         ({"dedupe_similarity": 1.5}, "dedupe_similarity"), ({"max_chunks_per_doc": 0}, "max_chunks"),
                         ({"where": {"$or": []}}, r"where\.\$or")]:
        with pytest.raises(ConfigError, match=rf"retrieval\.{name}"):
            check_retrieval_config(RetrievalConfig(**kwargs))


def test_pre_query_where_restricts(collections, questions):
    cfg = RetrievalConfig(fetch_k=6, top_k=6, dedupe_similarity=None)
    plain = search(collections["cosine"], questions[:1], cfg=cfg)[0]
    blog = search(collections["cosine"], questions[:1], cfg=cfg, where_per_query=[{"source": "blog"}])[0]
    assert {c.metadata["source"] for c in plain} == {"wiki", "blog"}
    assert blog and {c.metadata["source"] for c in blog} == {"blog"}
    assert blog[0].doc_id == "delta-blog"


def test_per_row_where_columns(collections, questions):
    cfg = RetrievalConfig(fetch_k=4, top_k=4, where_columns={"title": "topic"})
    rows = [{"topic": "Gardening"}, {"topic": "Apache Spark"}, {"topic": None}]
    q = np.repeat(questions[:1], 3, axis=0)  # the same Delta question, three different restrictions
    contexts, lineage = retrieve_contexts(rows, q, cfg=cfg, index=collections["cosine"])
    assert {c["title"] for c in contexts[0]} == {"Gardening"}
    assert {c["title"] for c in contexts[1]} == {"Apache Spark"}
    assert contexts[2][0]["title"] in ("Delta Lake", "Delta tips")
    assert json.loads(lineage[0])["pre_query"]["where"] == {"title": {"$eq": "Gardening"}}
    assert json.loads(lineage[2])["pre_query"]["where"] is None


def test_in_query_contains_and_not_contains(collections, questions):
    cfg = RetrievalConfig(fetch_k=5, top_k=5, dedupe_similarity=None)
    col = collections["cosine"]
    plain = search(col, questions[:1], cfg=cfg)[0]
    assert any("ACID" in c.text for c in plain)
    without = search(col, questions[:1], cfg=cfg, where_document_per_query=[{"$not_contains": "ACID"}])[0]
    assert without and all("ACID" not in c.text for c in without)
    only = search(col, questions[:1], cfg=cfg, where_document_per_query=[{"$contains": "small"}])[0]
    assert {c.chunk_id for c in only} == {"delta-blog-05", "spark-blog-09"}


def test_max_distance(collections, questions):
    cands = search(collections["cosine"], questions[:2], cfg=RetrievalConfig(fetch_k=10))
    limit = float(np.median([c.distance for c in cands[0]]))
    kept, removed = apply_post_filters(cands, RetrievalConfig(top_k=10, fetch_k=10, max_distance=limit,
                                                              dedupe_similarity=None))
    assert all(c.distance <= limit for c in kept[0]) and 0 < len(kept[0]) < 10
    assert removed[0]["max_distance"] == 10 - len(kept[0])


def test_dedupe_near_identical_keeps_better_ranked(collections, questions):
    cfg = RetrievalConfig(fetch_k=6, top_k=6, dedupe_similarity=None)
    cands = search(collections["cosine"], questions[[0, 2]], cfg=cfg)
    texts = [c.text for c in cands[0]]
    assert len(texts) != len(set(texts))  # the exact duplicate is retrieved twice
    assert {"chroma-13", "chroma-14"} <= {c.chunk_id for c in cands[1]}  # near duplicates (punctuation)
    kept, removed = apply_post_filters(cands, RetrievalConfig(fetch_k=6, top_k=6, dedupe_similarity=0.95))
    assert len({c.text for c in kept[0]}) == len(kept[0]) and removed[0]["dedupe"] >= 1
    near = [c.chunk_id for c in kept[1] if c.chunk_id in ("chroma-13", "chroma-14")]
    best = min((c for c in cands[1] if c.chunk_id in ("chroma-13", "chroma-14")), key=lambda c: c.distance)
    assert near == [best.chunk_id]
    assert [c.rank for c in kept[1]] == list(range(1, len(kept[1]) + 1))


def test_max_chunks_per_doc(collections, questions):
    cfg = RetrievalConfig(fetch_k=8, top_k=8, dedupe_similarity=None)
    cands = search(collections["cosine"], questions[:1], cfg=cfg)
    assert sum(c.doc_id == "delta" for c in cands[0]) >= 3
    kept, removed = apply_post_filters(cands, RetrievalConfig(fetch_k=8, top_k=8, dedupe_similarity=None,
                                                              max_chunks_per_doc=1))
    docs = [c.doc_id for c in kept[0]]
    assert len(docs) == len(set(docs)) and removed[0]["max_chunks_per_doc"] == 8 - len(docs)
    assert kept[0][0].chunk_id == cands[0][0].chunk_id


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory, minilm_path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1)
    path = tmp_path_factory.mktemp("cross-encoder")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_rerank_reorders_by_cross_encoder_scores(collections, questions, tiny_cross_encoder):
    cfg = RetrievalConfig(fetch_k=8, top_k=5, dedupe_similarity=None, rerank_model=tiny_cross_encoder)
    cands = search(collections["cosine"], questions[:2], cfg=cfg)
    score = make_rerank_fn(tiny_cross_encoder, batch_size=3)()
    assert make_rerank_fn(tiny_cross_encoder, batch_size=3)() is score  # cached per worker
    kept, removed = apply_post_filters(cands, cfg, queries=QUESTIONS[:2], rerank_fn=score)
    for q, before, after in zip(QUESTIONS, cands, kept):
        direct = dict(zip([c.chunk_id for c in before], score([q] * len(before), [c.text for c in before])))
        got = [c.score for c in after]
        assert got == sorted(got, reverse=True) and len(after) == 5
        np.testing.assert_allclose(got, [direct[c.chunk_id] for c in after], atol=1e-5)
        dropped = [v for k, v in direct.items() if k not in {c.chunk_id for c in after}]
        assert min(got) >= max(dropped) - 1e-5  # the 5 best by the model's scores survive
    assert any([c.chunk_id for c in a] != [c.chunk_id for c in b[:5]] for a, b in zip(kept, cands))
    assert removed[0]["reranked"] == 1 and removed[0]["top_k"] == 3
    with pytest.raises(ConfigError, match="retrieval.rerank_model"):
        apply_post_filters(cands, cfg, queries=QUESTIONS[:2])
    with pytest.raises(ModelContractError, match="expected 16 scores, got 1"):
        apply_post_filters(cands, cfg, queries=QUESTIONS[:2], rerank_fn=lambda q, p: np.zeros(1))


class CountingIndex:
    """Forwards to a real index and records each query call's size and filters."""

    def __init__(self, index):
        self.index, self.calls = index, []
        self.metadata = getattr(index, "metadata", None)

    def query(self, **kwargs):
        self.calls.append((len(kwargs["query_embeddings"]), kwargs["where"], kwargs["where_document"]))
        return self.index.query(**kwargs)


def test_queries_with_same_filters_are_batched_together(collections, exact, questions):
    counting = CountingIndex(collections["cosine"])
    wheres = [{"source": "blog"} if i % 2 else None for i in range(8)]
    cfg = RetrievalConfig(fetch_k=3, top_k=3, query_batch_size=3)
    got = search(counting, questions, cfg=cfg, where_per_query=wheres, where_document_per_query=[None] * 8)
    assert sorted(n for n, _, _ in counting.calls) == [1, 1, 3, 3]
    assert {json.dumps(w) for _, w, _ in counting.calls} == {"null", '{"source": "blog"}'}
    one_by_one = [search(exact["cosine"], questions[i:i + 1], cfg=cfg, where_per_query=[wheres[i]])[0]
                  for i in range(8)]
    assert ids_of(got) == ids_of(one_by_one)  # order restored after grouping


def test_query_dimension_checked(collections):
    with pytest.raises(ModelContractError, match="expected dimension 384 .*got 5"):
        search(collections["cosine"], np.ones((1, 5), np.float32), cfg=RetrievalConfig())


def test_retrieve_contexts_rows_fit_the_answers_schema(spark, exact, questions):
    from pyspark.sql.types import ArrayType, StringType, StructField, StructType

    from sparkrag.schemas import CONTEXT_STRUCT

    cfg = RetrievalConfig(vector_search="exact", fetch_k=8, top_k=3, max_chunks_per_doc=2, where={"source": "wiki"})
    contexts, lineage = retrieve_contexts([{}] * 3, questions[:3], cfg=cfg, index=exact["cosine"])
    assert [[c["rank"] for c in cs] for cs in contexts] == [[1, 2, 3]] * 3
    record = json.loads(lineage[0])
    assert record["pre_query"]["where"] == {"source": "wiki"} and record["vector_search"] == "exact"
    assert record["removed"]["fetched"] == 8 and record["removed"]["top_k"] >= 1
    assert filters_description(cfg, None, None)["post_query"]["max_chunks_per_doc"] == 2
    schema = StructType([StructField("contexts", ArrayType(CONTEXT_STRUCT, False)),
                         StructField("filters_json", StringType())])
    df = spark.createDataFrame(list(zip(contexts, lineage)), schema)
    assert df.count() == 3
