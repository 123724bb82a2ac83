"""Score fusion (z-score), document aggregation and their settings (issue #16).

The fusion math is tested as pure functions; the retrieval tests run the library's real
ExactIndex and a real bm25s index over hand-made vectors (the vectors are not what these
tests are about: they fix the dense ranking so the fused order can be checked by hand).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sparkrag.config import LexicalConfig, RagConfig, RetrievalConfig, load_config
from sparkrag.errors import ConfigError
from sparkrag.index.exact import ExactIndex
from sparkrag.retrieval.fusion import aggregate_documents, fuse_rankings
from sparkrag.index.lexical import LexicalIndex
from sparkrag.retrieval.search import check_retrieval_config, retrieve_contexts

DENSE = [("a", -0.10), ("b", -0.12), ("c", -0.40), ("d", -0.45)]
LEXICAL = [("c", 20.0), ("e", 4.0), ("b", 3.5)]


def _z(values):
    v = np.asarray(values, dtype=np.float64)
    return (v - v.mean()) / v.std()


def test_zscore_fusion_standardises_each_list_and_floors_missing_chunks():
    fused = fuse_rankings({"dense": DENSE, "lexical": LEXICAL}, method="zscore",
                          weights={"dense": 1.0, "lexical": 2.0})
    zd = dict(zip("abcd", _z([s for _, s in DENSE])))
    zl = dict(zip("ceb", _z([s for _, s in LEXICAL])))
    floor_d, floor_l = min(zd.values()), min(zl.values())
    expected = {cid: zd.get(cid, floor_d) + 2.0 * zl.get(cid, floor_l) for cid in "abcde"}
    assert {cid: s for cid, s, _ in fused} == pytest.approx(expected)
    assert [cid for cid, _, _ in fused] == sorted(expected, key=lambda c: -expected[c])
    assert dict((cid, r) for cid, _, r in fused)["e"] == {"lexical": 2}  # ranks as before


def test_zscore_keeps_a_confident_lead_that_rrf_averages_away():
    # Dense cannot tell its top four apart (0.300-0.306) and ranks "c" 4th; BM25 is sure of "c".
    dense = [("a", -0.300), ("b", -0.302), ("d", -0.304), ("c", -0.306), ("e", -0.60), ("f", -0.62), ("g", -0.64)]
    lexical = [("c", 20.0), ("b", 4.0), ("x", 3.5)]
    rrf = [cid for cid, _, _ in fuse_rankings({"dense": dense, "lexical": lexical}, method="rrf")]
    zscore = [cid for cid, _, _ in fuse_rankings({"dense": dense, "lexical": lexical}, method="zscore")]
    assert rrf[0] == "b" and zscore[0] == "c"  # rrf: 2/62 > 1/64 + 1/61; zscore: c's lead counts


def test_zscore_degenerate_lists_carry_no_evidence():
    single = fuse_rankings({"dense": [("a", -0.3)], "lexical": [("b", 7.0), ("a", 1.0)]}, method="zscore")
    assert {cid: s for cid, s, _ in single} == pytest.approx({"b": 1.0, "a": -1.0})  # one hit: z = 0
    tied = fuse_rankings({"dense": [("a", -0.2), ("b", -0.2)]}, method="zscore")
    assert [(cid, s) for cid, s, _ in tied] == [("a", 0.0), ("b", 0.0)]  # ties keep rank order
    assert fuse_rankings({"dense": [], "lexical": []}, method="zscore") == []
    assert [c for c, _, _ in fuse_rankings({"dense": DENSE}, method="zscore")] == ["a", "b", "c", "d"]


def test_document_aggregation():
    fused = [("x1", 3.0, {}), ("y1", 2.5, {}), ("z1", 2.0, {}), ("y2", 1.0, {}), ("x2", -4.0, {})]
    doc_of = {"x1": "x", "x2": "x", "y1": "y", "y2": "y", "z1": "z"}
    order = {how: [c for c, _, _ in aggregate_documents(fused, doc_of, how=how)] for how in ("none", "max", "sum")}
    assert order["none"] == ["x1", "y1", "z1", "y2", "x2"]
    assert order["max"] == ["x1", "x2", "y1", "y2", "z1"]  # a document's chunks together, best document first
    assert order["sum"] == ["y1", "y2", "x1", "x2", "z1"]  # y: 2.5 + 1.0 > x: 3.0 (x2's negative adds nothing)
    assert aggregate_documents(fused, doc_of, how="sum")[0] == ("y1", 2.5, {})  # scores and ranks untouched
    with pytest.raises(ConfigError, match="retrieval.doc_aggregation"):
        aggregate_documents(fused, doc_of, how="mean")  # type: ignore[arg-type]


def test_fusion_settings_are_checked():
    assert load_config(RagConfig, None, []).retrieval.fusion == "zscore"
    cfg = load_config(RagConfig, None, ["retrieval.fusion=rrf", "retrieval.doc_aggregation=sum"])
    assert (cfg.retrieval.fusion, cfg.retrieval.doc_aggregation) == ("rrf", "sum")
    with pytest.raises(ConfigError, match="retrieval.fusion: expected one of"):
        load_config(RagConfig, None, ["retrieval.fusion=combmnz"])
    with pytest.raises(ConfigError, match="retrieval.doc_aggregation: expected one of"):
        load_config(RagConfig, None, ["retrieval.doc_aggregation=mean"])
    with pytest.raises(ConfigError, match="retrieval.fusion: expected one of rrf, weighted, zscore"):
        fuse_rankings({"dense": DENSE}, method="combmnz")  # type: ignore[arg-type]
    index = ExactIndex(["a"], np.ones((1, 2)), ["t"], [{"doc_id": "d"}], "cosine")
    with pytest.raises(ConfigError, match="retrieval.doc_aggregation"):
        retrieve_contexts([{}], np.ones((1, 2)), cfg=RetrievalConfig(doc_aggregation="mean"),  # type: ignore[arg-type]
                          index=index)


def test_compare_mode_variants_are_valid_settings():
    from sparkrag.pipelines.compare import MODES, VARIANTS
    from sparkrag.pipelines.evaluate import EvalOptions, check_options

    for mode, options, title_weight in VARIANTS.values():
        check_retrieval_config(dataclasses.replace(RetrievalConfig(), mode=mode, **options))
        assert title_weight is None or title_weight >= 0
    assert {"dense", "lexical", "hybrid", "hybrid-rrf"} <= set(MODES)
    check_options(EvalOptions(compare_modes=("hybrid", "hybrid-rrf", "lexical-notitle"), report_dir=None))
    with pytest.raises(ConfigError, match="compare_modes .*expected some of dense, lexical, hybrid, hybrid-rrf"):
        check_options(EvalOptions(compare_modes=("bm25",), report_dir=None))


# ---- through retrieve_contexts ----

CHUNKS = [  # (chunk_id, doc_id, text, dense vector)
    ("p1:0", "pump", "The pump moves water from the well.", [1.0, 0.05]),
    ("p1:1", "pump", "The pump impeller spins at 3000 rpm.", [0.9, 0.3]),
    ("v1:0", "valve", "A valve controls the water flow.", [0.95, 0.1]),
    ("m1:0", "motor", "The motor drives the pump shaft.", [0.5, 0.8]),
    ("f1:0", "filter", "The filter keeps sand out.", [0.1, 1.0]),
]


@pytest.fixture(scope="module")
def small():
    ids = [c[0] for c in CHUNKS]
    texts = [c[2] for c in CHUNKS]
    metas = [{"doc_id": c[1], "chunk_index": int(c[0][-1]), "kind": "spin" if "rpm" in c[2] else "other"}
             for c in CHUNKS]
    vectors = np.asarray([c[3] for c in CHUNKS], dtype=np.float32)
    return ExactIndex(ids, vectors, texts, metas, "cosine"), LexicalIndex.build(ids, texts, metas, LexicalConfig())


def _retrieve(small, query, vector, **settings):
    index, lexical = small
    cfg = RetrievalConfig(**{"mode": "hybrid", "top_k": 5, "fetch_k": 5, "dedupe_similarity": None, **settings})
    contexts, lineage = retrieve_contexts([{}], np.asarray([vector], dtype=np.float32), cfg=cfg, index=index,
                                          lexical=lexical, query_texts=[query])
    return contexts[0], json.loads(lineage[0])


def test_hybrid_zscore_and_doc_aggregation_through_retrieval(small):
    query, vector = "How fast does the pump impeller spin?", [1.0, 0.0]
    plain, lineage = _retrieve(small, query, vector)
    assert lineage["fusion"]["method"] == "zscore" and lineage["post_query"]["doc_aggregation"] == "none"
    assert plain[0]["chunk_id"] == "p1:1"  # BM25's clear winner ("impeller", "spin") beats dense's near tie
    scores = [c["fusion_score"] for c in plain]
    assert scores == sorted(scores, reverse=True)
    grouped, lineage = _retrieve(small, query, vector, doc_aggregation="max")
    docs = [c["doc_id"] for c in grouped]
    assert docs[:2] == ["pump", "pump"] and len(docs) == len(set(docs)) + 1  # the pump's two chunks together
    assert lineage["post_query"]["doc_aggregation"] == "max" and [c["rank"] for c in grouped] == [1, 2, 3, 4, 5]
    per_doc, _ = _retrieve(small, query, vector, doc_aggregation="sum", max_chunks_per_doc=1)
    assert len({c["doc_id"] for c in per_doc}) == len(per_doc)  # post-query filters still apply after it


@pytest.mark.parametrize("settings", [{"fusion": "zscore"}, {"fusion": "zscore", "doc_aggregation": "sum"},
                                      {"fusion": "rrf", "doc_aggregation": "max"}])
def test_filters_hold_with_score_fusion_and_aggregation(small, settings):
    query, vector = "pump water spin", [1.0, 0.1]
    ctx, lineage = _retrieve(small, query, vector, where={"kind": "other"}, **settings)
    assert ctx and all(c["metadata"]["kind"] == "other" for c in ctx), ctx
    assert "p1:1" not in [c["chunk_id"] for c in ctx]
    ctx, _ = _retrieve(small, query, vector, where_document={"$contains": "water"}, **settings)
    assert {c["chunk_id"] for c in ctx} == {"p1:0", "v1:0"}
