"""The BM25 engine (sparkrag.index.bm25) against bm25s itself, on the shipped Wikipedia sample.

bm25s is the reference: the same tokens, the same Lucene formula; our postings take the
corpus figures from outside so that a shard can score like the corpus. On one index the
two must agree bit for bit (float32 sums in the same order), and the shards of a corpus,
scored with the corpus's summed figures, must give every chunk the same score.
"""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from sparkrag.config import LexicalConfig
from sparkrag.index.bm25 import FieldStats, Postings
from sparkrag.index.layout import shard_of
from sparkrag.index.lexical import LexicalIndex, _tokenize, settings_of, tokenize
from sparkrag.index.lexical_shards import ShardedLexical, sum_stats

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus():
    docs = [json.loads(line) for line in (ROOT / "resources/sample/documents.jsonl").read_text().splitlines()]
    questions = [json.loads(line)["question"] for line in
                 (ROOT / "resources/sample/questions.jsonl").read_text().splitlines()]
    docs.append({"doc_id": "empty#0", "title": "", "text": "the of and"})  # no token left: length 0
    return docs, questions + ["Beyonce Beyonce album", "zzzz unknown", "the of"]


def test_scores_equal_bm25s_bit_for_bit(corpus):
    docs, questions = corpus
    settings = settings_of(LexicalConfig())
    tokens = _tokenize([d["text"] for d in docs], settings, return_ids=True)
    reference = bm25s.BM25(k1=1.5, b=0.75)  # method "lucene", bm25s's default
    reference.index(tokens, show_progress=False)
    ours = Postings.from_ids(tokens.ids, tokens.vocab)
    stats = ours.local_stats()
    checked = 0
    for query in tokenize(questions, settings):
        if not query:
            continue
        expected = reference.get_scores(query)
        got = ours.scores(query, stats, k1=1.5, b=0.75)
        assert got.dtype == np.float32 and np.array_equal(got, expected), query
        checked += int((expected > 0).sum())
    assert checked > 1000  # the comparison covered real hits, not only zeros


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_shards_with_summed_figures_score_like_one_index(corpus, shards):
    docs, questions = corpus
    cfg = LexicalConfig()
    metas = [{"doc_id": d["doc_id"], "title": d["title"]} for d in docs]
    whole = LexicalIndex.build([d["doc_id"] for d in docs], [d["text"] for d in docs], metas, cfg)
    parts = []
    for s in range(shards):
        mine = [i for i, d in enumerate(docs) if shard_of(d["doc_id"], shards) == s]
        parts.append(LexicalIndex.build([docs[i]["doc_id"] for i in mine], [docs[i]["text"] for i in mine],
                                        [metas[i] for i in mine], cfg))
    sharded = ShardedLexical(parts, *sum_stats([p.term_frequencies() for p in parts],
                                               [(len(p), int(p.text.lengths.sum()),
                                                 int(p.title.lengths.sum())) for p in parts]))
    n = len(docs)
    one, many = whole.query(questions, n_results=n), sharded.query(questions, n_results=n)
    assert one["ids"] and any(one["ids"])
    for q, ids_one, s_one, ids_many, s_many in zip(questions, one["ids"], one["scores"], many["ids"], many["scores"]):
        assert dict(zip(ids_many, s_many)) == dict(zip(ids_one, s_one)), q  # equal floats, not close ones
        assert [s_many[i] for i in range(len(s_many))] == sorted(s_many, reverse=True)
    # with its own figures, a shard scores differently: the figures matter
    own = parts[0].query(questions, n_results=n)
    differs = [dict(zip(i, s)) for i, s in zip(own["ids"], own["scores"])]
    same = [{k: v for k, v in dict(zip(i, s)).items() if k in d} for i, s, d in zip(one["ids"], one["scores"], differs)]
    assert any(d and d != s for d, s in zip(differs, same))


def test_top_k_of_shards_is_the_top_k_of_the_corpus(corpus):
    docs, questions = corpus
    cfg = LexicalConfig()
    metas = [{"doc_id": d["doc_id"], "title": d["title"]} for d in docs]
    whole = LexicalIndex.build([d["doc_id"] for d in docs], [d["text"] for d in docs], metas, cfg)
    parts = [LexicalIndex.build(*zip(*[(d["doc_id"], d["text"], m) for d, m in zip(docs, metas)
                                      if shard_of(d["doc_id"], 4) == s]), cfg) for s in range(4)]
    sharded = ShardedLexical(parts, *sum_stats([p.term_frequencies() for p in parts],
                                               [(len(p), int(p.text.lengths.sum()),
                                                 int(p.title.lengths.sum())) for p in parts]))
    where = {"doc_id": {"$nin": [docs[0]["doc_id"]]}}
    for kwargs in ({}, {"where": where}, {"where_document": {"$contains": "the"}}):
        a, b = whole.query(questions, n_results=5, **kwargs), sharded.query(questions, n_results=5, **kwargs)
        for q, sa, sb in zip(questions, a["scores"], b["scores"]):
            assert sa == sb, (q, kwargs)  # no ties among the top scores of this sample


def test_field_stats_and_empty_postings():
    empty = Postings.build([])
    assert len(empty) == 0 and empty.scores(["x"], empty.local_stats(), k1=1.5, b=0.75).shape == (0,)
    p = Postings.build([["a", "b", "a"], [], ["b"]])
    assert p.terms == ["a", "b"] and p.doc_frequencies().tolist() == [1, 2] and p.lengths.tolist() == [3, 0, 1]
    stats = p.local_stats()
    assert (stats.n_docs, stats.total_len, stats.df("b"), stats.df("zz")) == (3, 4, 2, 0)
    bigger = FieldStats(30, 40, {"a": 1, "b": 2}.get, key="corpus")  # b is rare in the corpus: scores rise
    assert p.scores(["b"], bigger, k1=1.5, b=0.75)[2] > p.scores(["b"], stats, k1=1.5, b=0.75)[2]


def test_an_updated_index_equals_one_built_from_scratch(corpus):
    docs, questions = corpus
    cfg = LexicalConfig()
    metas = [{"doc_id": d["doc_id"], "title": d["title"]} for d in docs]
    old = LexicalIndex.build([d["doc_id"] for d in docs[:150]], [d["text"] for d in docs[:150]], metas[:150], cfg)
    keep = [i % 7 != 3 for i in range(150)]  # some chunks deleted or changed ...
    new = list(range(150, 200))  # ... and new ones added
    updated = old.updated(keep, [docs[i]["doc_id"] for i in new], [docs[i]["text"] for i in new],
                          [metas[i] for i in new])
    order = [i for i in range(150) if keep[i]] + new
    fresh = LexicalIndex.build([docs[i]["doc_id"] for i in order], [docs[i]["text"] for i in order],
                               [metas[i] for i in order], cfg)
    assert updated.ids == fresh.ids and updated.metadatas == fresh.metadatas
    for field in ("text", "title"):
        a, b = getattr(updated, field), getattr(fresh, field)
        assert sorted(a.terms) == sorted(b.terms) and np.array_equal(a.lengths, b.lengths)
        assert dict(zip(a.terms, a.doc_frequencies().tolist())) == dict(zip(b.terms, b.doc_frequencies().tolist()))
    assert updated.query(questions, n_results=20) == fresh.query(questions, n_results=20)
    assert len(old.updated([False] * 150, [], [], [])) == 0
