"""Scatter-gather retrieval: each shard searched on its own, the per-shard candidates merged per question.

The answer job's partitioned access (``retrieval.shard_access``) sends every question to
every shard; a task opens one shard (vector and lexical: shard ``i`` of both holds the same
documents), runs :func:`search_shard`, and emits rows. :func:`merge_shards` then takes, per
retriever, the best ``fetch_k`` of all shards' rows exactly as the replicated path's
``ShardedIndex`` and ``ShardedLexical`` merge them (dense by distance, lexical by BM25
score; ties by shard, then rank), recomputes the lexical hits' distances as
:func:`~sparkrag.retrieval.search.search_lexical` does, and hands the lists to the same
fusion and post-query filters. With no ties, both paths return the same contexts.

Example:
    >>> rows = search_shard(0, [None], [None], vectors, ["a question"], cfg=cfg, index=shard, lexical=None)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from sparkrag.config import RetrievalConfig
from sparkrag.index.exact import distances
from sparkrag.retrieval.search import Candidate, search, search_lexical

__all__ = ["CANDIDATE_COLUMNS", "CANDIDATE_SCHEMA", "search_shard", "merge_shards", "marker"]

# One row per (question, shard, retriever, rank), plus one marker row ("done" or "error") per
# question and shard. ``info`` is JSON: doc_id, title, chunk_index and the user's metadata.
CANDIDATE_SCHEMA = ("question_id string, _shard int, kind string, rank int, chunk_id string, text string, "
                    "distance double, score double, info string, embedding array<float>, error string")
CANDIDATE_COLUMNS = [c.split()[0] for c in CANDIDATE_SCHEMA.split(", ")]


def marker(question_id: str, shard: int, error: str | None = None, ms: float = 0.0) -> dict[str, Any]:
    """The row saying that ``shard`` answered ``question_id`` (``score``: its milliseconds per question)."""
    return {"question_id": question_id, "_shard": shard, "kind": "error" if error else "done", "rank": None,
            "chunk_id": None, "text": None, "distance": None, "score": ms, "info": None, "embedding": None,
            "error": error}


def _row(question_id: str, shard: int, kind: str, rank: int, c: Candidate, score: float | None) -> dict[str, Any]:
    info = {"doc_id": c.doc_id, "title": c.title, "chunk_index": c.chunk_index, "metadata": c.metadata}
    return {"question_id": question_id, "_shard": shard, "kind": kind, "rank": rank, "chunk_id": c.chunk_id,
            "text": c.text, "distance": c.distance, "score": score, "info": json.dumps(info, sort_keys=True),
            "embedding": None if c.embedding is None else np.asarray(c.embedding, dtype=np.float32), "error": None}


def search_shard(shard: int, question_ids: Sequence[str], wheres: Sequence[Mapping[str, Any] | None],
                 docs: Sequence[Mapping[str, Any] | None], query_embeddings: Any, query_texts: Sequence[str], *,
                 cfg: RetrievalConfig, index: Any, lexical: Any, space: str) -> list[dict[str, Any]]:
    """Candidate rows of one shard for a batch of questions: its own ``fetch_k`` per retriever.

    ``index`` is the shard's vector index (Chroma collection or ExactIndex) and ``lexical`` its
    lexical shard (scoring with the corpus's figures); lexical hits take their vectors from
    ``index``, which holds the same documents.
    """
    out: list[dict[str, Any]] = []
    dense: list[list[Candidate]] = []
    if cfg.mode in ("dense", "hybrid"):
        dense = search(index, query_embeddings, cfg=cfg, where_per_query=wheres, where_document_per_query=docs)
        for qid, cands in zip(question_ids, dense):
            out += [_row(qid, shard, "dense", r, c, None) for r, c in enumerate(cands)]
    if cfg.mode in ("lexical", "hybrid"):
        known = {c.chunk_id: c.embedding for cs in dense for c in cs if c.embedding is not None}
        cands, scores = search_lexical(lexical, index, query_texts, query_embeddings, cfg=cfg, space=space,
                                       where_per_query=wheres, where_document_per_query=docs, known_vectors=known)
        for qid, cs, ss in zip(question_ids, cands, scores):
            out += [_row(qid, shard, "lexical", r, c, s) for r, (c, s) in enumerate(zip(cs, ss))]
    return out


def _candidate(row: Mapping[str, Any], distance: float | None = None) -> Candidate:
    info = json.loads(row["info"])
    emb = row["embedding"]
    return Candidate(chunk_id=row["chunk_id"], doc_id=info["doc_id"], title=info["title"], text=row["text"] or "",
                     distance=float(row["distance"] if distance is None else distance), metadata=info["metadata"],
                     chunk_index=info["chunk_index"],
                     embedding=None if emb is None else np.asarray(emb, dtype=np.float32))


def merge_shards(rows: Sequence[Mapping[str, Any]], query_embedding: Any, *, cfg: RetrievalConfig,
                 space: str) -> tuple[dict[str, list[Candidate]], dict[str, list[float]]]:
    """One question's candidate rows of every shard -> per retriever, the merged list and its relevance."""
    lists: dict[str, list[Candidate]] = {}
    relevance: dict[str, list[float]] = {}
    if cfg.mode in ("dense", "hybrid"):
        best = sorted((r for r in rows if r["kind"] == "dense"),
                      key=lambda r: (r["distance"], r["_shard"], r["rank"]))[:cfg.fetch_k]
        lists["dense"] = [_candidate(r) for r in best]
        relevance["dense"] = [-c.distance for c in lists["dense"]]
    if cfg.mode in ("lexical", "hybrid"):
        best = sorted((r for r in rows if r["kind"] == "lexical"),
                      key=lambda r: (-r["score"], r["_shard"], r["rank"]))[:cfg.fetch_k]
        dist = (distances(np.asarray(query_embedding, dtype=np.float32),
                          np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in best]), space)[0]
                if best else [])  # as search_lexical computes them: one matrix, in merged order
        lists["lexical"] = [_candidate(r, d) for r, d in zip(best, dist)]
        relevance["lexical"] = [float(r["score"]) for r in best]
    return lists, relevance
