"""Top-k search with pre-, in- and post-query filters: dense, lexical (BM25) or both fused.

* pre-query: a metadata ``where`` (static ``retrieval.where`` and per-row ``where_columns``);
* in-query: a ``where_document`` on the chunk text (``$contains`` ...);
* ``retrieval.mode``: ``dense`` (Chroma HNSW, or :class:`~sparkrag.index.exact.ExactIndex` with
  ``vector_search: exact``), ``lexical`` (:class:`~sparkrag.index.lexical.LexicalIndex`) or
  ``hybrid`` (both lists fused, :mod:`sparkrag.retrieval.fusion`). Every mode applies the same pre-
  and in-query filters, and every candidate gets its true vector distance;
* post-query, after fusion (and ``doc_aggregation``), in this order: ``max_distance``,
  near-duplicate removal, ``max_chunks_per_doc``, optional cross-encoder re-rank,
  truncation to ``top_k``. What each removed is recorded; each context records which
  retrievers found it at what rank.

Example:
    >>> contexts, filters_json = retrieve_contexts(rows, vectors, cfg=cfg, index=collection)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from sparkrag.config import RetrievalConfig
from sparkrag.errors import ConfigError, ModelContractError, SchemaError, VectorStoreError
from sparkrag.index.exact import distances
from sparkrag.index.where import check_where, check_where_document
from sparkrag.retrieval.filters import build_where, build_where_document
from sparkrag.retrieval.fusion import DOC_AGGREGATIONS, aggregate_documents, check_fusion, fuse_rankings
from sparkrag.retrieval.rerank import RerankFn
from sparkrag.index.vectorstore import RESERVED_METADATA_KEYS

__all__ = [
    "Candidate",
    "check_retrieval_config",
    "search",
    "search_lexical",
    "find_candidates",
    "apply_post_filters",
    "filters_description",
    "fuse_lists",
    "finish_contexts",
    "retrieve_contexts",
]

log = logging.getLogger(__name__)

_INCLUDE = ["documents", "metadatas", "distances", "embeddings"]


@dataclass(frozen=True)
class Candidate:
    """One retrieved chunk. ``metadata`` holds the user's keys only; ``rank`` is set last."""

    chunk_id: str
    doc_id: str
    title: str | None
    text: str
    distance: float
    metadata: dict[str, str]
    chunk_index: int | None = None
    embedding: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    score: float | None = None  # cross-encoder score when re-ranked
    rank: int = 0
    retrievers: Mapping[str, int] = dataclasses.field(default_factory=dict)  # retriever -> its 1-based rank
    fusion_score: float | None = None  # hybrid only

    def to_context(self) -> dict[str, Any]:
        """The row of ``schemas.CONTEXT_STRUCT``."""
        return {"chunk_id": self.chunk_id, "doc_id": self.doc_id, "title": self.title, "text": self.text,
                "distance": float(self.distance), "rank": self.rank, "metadata": dict(self.metadata),
                "retrievers": dict(self.retrievers), "fusion_score": self.fusion_score}


# ---- pre- and in-query filters built per row ----

def check_retrieval_config(cfg: RetrievalConfig) -> None:
    """Raise ConfigError naming the first ``retrieval.*`` option out of range or malformed."""
    checks = [
        ("top_k", cfg.top_k >= 1, "expected >= 1"),
        ("fetch_k", cfg.fetch_k >= cfg.top_k, f"expected >= top_k ({cfg.top_k})"),
        ("query_batch_size", cfg.query_batch_size >= 1, "expected >= 1"),
        ("max_distance", cfg.max_distance is None or cfg.max_distance >= 0, "expected >= 0 or null"),
        ("dedupe_similarity", cfg.dedupe_similarity is None or 0 < cfg.dedupe_similarity <= 1,
         "expected in (0, 1] or null"),
        ("max_chunks_per_doc", cfg.max_chunks_per_doc is None or cfg.max_chunks_per_doc >= 1,
         "expected >= 1 or null"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise ConfigError(f"retrieval.{name}: {why}, got {getattr(cfg, name)!r}")
    if cfg.mode not in ("dense", "lexical", "hybrid"):
        hint = " (ann/exact moved to retrieval.vector_search)" if cfg.mode in ("ann", "exact") else ""
        raise ConfigError(f"retrieval.mode: expected 'dense', 'lexical' or 'hybrid', got {cfg.mode!r}{hint}")
    if cfg.shard_access not in ("auto", "replicated", "partitioned"):
        raise ConfigError(f"retrieval.shard_access: expected 'auto', 'replicated' or 'partitioned', "
                          f"got {cfg.shard_access!r}")
    check_fusion(cfg.fusion, cfg.rrf_k, cfg.weights)
    if cfg.doc_aggregation not in DOC_AGGREGATIONS:
        raise ConfigError(f"retrieval.doc_aggregation: expected one of {', '.join(DOC_AGGREGATIONS)}, "
                          f"got {cfg.doc_aggregation!r}")
    if cfg.where is not None:
        check_where(cfg.where)
    if cfg.where_document is not None:
        check_where_document(cfg.where_document)
    for key in cfg.where_columns:
        if not key or key.startswith("$"):
            raise ConfigError(f"retrieval.where_columns: {key!r} is not a metadata key")


# ---- search ----

def _candidate(chunk_id: str, meta: Mapping[str, Any] | None, text: str | None, distance: float,
               embedding: Any) -> Candidate:
    meta = dict(meta or {})
    if "doc_id" not in meta:
        raise VectorStoreError(f"chunk {chunk_id!r} has no doc_id metadata: not written by sparkrag?")
    user = {key: str(v) for key, v in meta.items() if key not in RESERVED_METADATA_KEYS}
    emb = None if embedding is None else np.asarray(embedding, dtype=np.float32)
    return Candidate(chunk_id=chunk_id, doc_id=str(meta["doc_id"]), title=meta.get("title"), text=text or "",
                     distance=float(distance), metadata=user, chunk_index=meta.get("chunk_index"), embedding=emb)


def _candidates(res: Mapping[str, Any], j: int) -> list[Candidate]:
    embeddings = res.get("embeddings")
    return [_candidate(cid, res["metadatas"][j][k], res["documents"][j][k], res["distances"][j][k],
                       None if embeddings is None else embeddings[j][k])
            for k, cid in enumerate(res["ids"][j])]


def _filter_groups(wheres: Sequence[Mapping[str, Any] | None], docs: Sequence[Mapping[str, Any] | None],
                   batch: int) -> Iterator[tuple[list[int], Mapping[str, Any] | None, Mapping[str, Any] | None]]:
    """Query positions sharing the same filters, ``batch`` at a time, with those filters (checked)."""
    groups: dict[str, list[int]] = {}
    for i, (w, wd) in enumerate(zip(wheres, docs)):
        groups.setdefault(json.dumps([w or None, wd or None], sort_keys=True, default=str), []).append(i)
    for members in groups.values():
        where, where_doc = wheres[members[0]] or None, docs[members[0]] or None
        if where:
            check_where(where, option=f"retrieval.where (query {members[0]})")
        if where_doc:
            check_where_document(where_doc, option=f"retrieval.where_document (query {members[0]})")
        for lo in range(0, len(members), batch):
            yield members[lo:lo + batch], where, where_doc


def search(index: Any, query_embeddings: Any, *, cfg: RetrievalConfig,
           where_per_query: Sequence[Mapping[str, Any] | None] | None = None,
           where_document_per_query: Sequence[Mapping[str, Any] | None] | None = None) -> list[list[Candidate]]:
    """The ``cfg.fetch_k`` nearest chunks per query, filters applied inside the index.

    Queries sharing the same filters go to the index together, ``cfg.query_batch_size`` at a
    time (a filtered query alone costs 10-50x its share of a batch).

    Args:
        index: a Chroma ``Collection`` or an :class:`ExactIndex`.
        query_embeddings: (n, dim) matrix.
        where_per_query, where_document_per_query: one filter (or None) per query.

    Returns:
        Per query, candidates nearest first (rank not yet set).

    Raises:
        ConfigError: a malformed filter; ModelContractError: wrong query dimension;
        VectorStoreError: the index answered for a different number of queries.
    """
    q = np.asarray(query_embeddings, dtype=np.float32)
    n = q.shape[0] if q.ndim == 2 else -1
    wheres = list(where_per_query) if where_per_query is not None else [None] * max(n, 0)
    docs = list(where_document_per_query) if where_document_per_query is not None else [None] * max(n, 0)
    if n < 0 or len(wheres) != n or len(docs) != n:
        raise SchemaError(f"search: expected a (n, dim) matrix and n filters, got shape {q.shape}, "
                          f"{len(wheres)} where and {len(docs)} where_document")
    dim = (getattr(index, "metadata", None) or {}).get("embedding_dim")
    if dim is not None and n and q.shape[1] != int(dim):
        raise ModelContractError(f"query embeddings: expected dimension {dim} (the index's), got {q.shape[1]}")
    out: list[list[Candidate]] = [[] for _ in range(n)]
    for chunk, where, where_doc in _filter_groups(wheres, docs, cfg.query_batch_size):
        res = index.query(query_embeddings=q[chunk], n_results=cfg.fetch_k, where=where,
                          where_document=where_doc, include=_INCLUDE)
        if len(res["ids"]) != len(chunk):
            raise VectorStoreError(f"index query: expected results for {len(chunk)} queries, got {len(res['ids'])}")
        for j, i in enumerate(chunk):
            out[i] = _candidates(res, j)
    return out


def search_lexical(lexical: Any, index: Any, query_texts: Sequence[str], query_embeddings: Any, *,
                   cfg: RetrievalConfig, space: str, where_per_query: Sequence[Mapping[str, Any] | None],
                   where_document_per_query: Sequence[Mapping[str, Any] | None],
                   known_vectors: Mapping[str, np.ndarray] | None = None) -> tuple[list[list[Candidate]],
                                                                                   list[list[float]]]:
    """The ``cfg.fetch_k`` best BM25 chunks per query, with their vector distance from ``index``.

    The vectors come from the dense index (``get``), so post-query filters such as
    ``max_distance`` and dedupe mean the same thing in every mode. ``known_vectors``
    (chunk_id -> vector, e.g. the dense hits of a hybrid search) are not fetched again.

    Returns:
        Per query, candidates best BM25 first, and their BM25 scores.

    Raises:
        VectorStoreError: a lexical hit is missing from the vector index (the two disagree:
            rerun the ingest job).
    """
    q = np.asarray(query_embeddings, dtype=np.float32)
    hits: list[tuple[list[str], list[float], list[Any], list[str]]] = [([], [], [], [])] * len(query_texts)
    for chunk, where, where_doc in _filter_groups(where_per_query, where_document_per_query, cfg.query_batch_size):
        res = lexical.query([query_texts[i] for i in chunk], n_results=cfg.fetch_k, where=where,
                            where_document=where_doc)
        for j, i in enumerate(chunk):
            hits[i] = (res["ids"][j], res["scores"][j], res["metadatas"][j], res["documents"][j])
    vectors = dict(known_vectors or {})
    wanted = sorted({cid for ids, *_ in hits for cid in ids})
    vectors.update(_vectors_by_id(index, [cid for cid in wanted if cid not in vectors]))
    missing = [cid for cid in wanted if cid not in vectors]
    if missing:
        raise VectorStoreError(f"{len(missing)} lexical hit(s) are not in the vector index, e.g. {missing[:3]}: "
                               "the lexical index and the vector store disagree; rerun the ingest job")
    out, scores = [], []
    for i, (ids, bm25, metas, texts) in enumerate(hits):
        dist = distances(q[i], np.stack([vectors[c] for c in ids]), space)[0] if ids else []
        out.append([_candidate(c, m, t, d, vectors[c]) for c, m, t, d in zip(ids, metas, texts, dist)])
        scores.append(list(bm25))
    return out, scores


def _vectors_by_id(index: Any, ids: Sequence[str], *, batch: int = 1000) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for lo in range(0, len(ids), batch):
        res = index.get(ids=list(ids[lo:lo + batch]), include=["embeddings"])
        out.update({cid: np.asarray(v, dtype=np.float32) for cid, v in zip(res["ids"], res["embeddings"])})
    return out


def find_candidates(rows_wheres: Sequence[Mapping[str, Any] | None], rows_docs: Sequence[Mapping[str, Any] | None],
                    query_embeddings: Any, *, cfg: RetrievalConfig, index: Any, lexical: Any = None,
                    query_texts: Sequence[str] | None = None, space: str = "cosine") -> list[list[Candidate]]:
    """``cfg.mode``'s candidates per query, each with the ranks its retrievers gave it, best first.

    Raises:
        ConfigError: lexical or hybrid mode without a lexical index or the query texts.
    """
    lists: dict[str, list[list[Candidate]]] = {}
    relevance: dict[str, list[list[float]]] = {}
    if cfg.mode in ("dense", "hybrid"):
        lists["dense"] = search(index, query_embeddings, cfg=cfg, where_per_query=rows_wheres,
                                where_document_per_query=rows_docs)
        relevance["dense"] = [[-c.distance for c in cs] for cs in lists["dense"]]
    if cfg.mode in ("lexical", "hybrid"):
        if lexical is None or query_texts is None:
            raise ConfigError(f"retrieval.mode={cfg.mode!r} needs the lexical index and the query texts "
                              "(lexical.enabled at ingest)")
        known = {c.chunk_id: c.embedding for cs in lists.get("dense", []) for c in cs if c.embedding is not None}
        lists["lexical"], relevance["lexical"] = search_lexical(
            lexical, index, query_texts, query_embeddings, cfg=cfg, space=space, where_per_query=rows_wheres,
            where_document_per_query=rows_docs, known_vectors=known)
    return fuse_lists(lists, relevance, len(rows_wheres), cfg)


def fuse_lists(lists: Mapping[str, Sequence[Sequence[Candidate]]], relevance: Mapping[str, Sequence[Sequence[float]]],
               n: int, cfg: RetrievalConfig) -> list[list[Candidate]]:
    """Per query, the retrievers' lists (``dense``/``lexical``, with their relevance) fused and aggregated."""
    out = []
    for i in range(n):
        by_id = {c.chunk_id: c for name in lists for c in lists[name][i]}
        fused = fuse_rankings({name: [(c.chunk_id, r) for c, r in zip(lists[name][i], relevance[name][i])]
                               for name in lists}, method=cfg.fusion, k=cfg.rrf_k, weights=cfg.weights)
        fused = aggregate_documents(fused, {cid: c.doc_id for cid, c in by_id.items()}, how=cfg.doc_aggregation)
        hybrid = len(lists) > 1
        out.append([dataclasses.replace(by_id[cid], retrievers=ranks, fusion_score=score if hybrid else None)
                    for cid, score, ranks in fused])
    return out


# ---- post-query filters ----

def _dedupe(cands: list[Candidate], threshold: float) -> list[Candidate]:
    kept: list[Candidate] = []
    kept_vecs: list[np.ndarray] = []
    texts: set[str] = set()
    for c in cands:  # nearest first: the better-ranked of two near-duplicates survives
        text = " ".join(c.text.split())
        vec = None
        if c.embedding is not None:
            vec = c.embedding.astype(np.float64) / max(float(np.linalg.norm(c.embedding)), 1e-30)
        if text in texts or (vec is not None and any(float(vec @ k) >= threshold for k in kept_vecs)):
            continue
        kept.append(c)
        texts.add(text)
        if vec is not None:
            kept_vecs.append(vec)
    return kept


def _per_doc(cands: list[Candidate], limit: int) -> list[Candidate]:
    seen: dict[str, int] = {}
    kept = []
    for c in cands:
        seen[c.doc_id] = seen.get(c.doc_id, 0) + 1
        if seen[c.doc_id] <= limit:
            kept.append(c)
    return kept


def apply_post_filters(candidates: Sequence[Sequence[Candidate]], cfg: RetrievalConfig, *,
                       queries: Sequence[str] | None = None,
                       rerank_fn: RerankFn | None = None) -> tuple[list[list[Candidate]], list[dict[str, int]]]:
    """max_distance, dedupe, max_chunks_per_doc, re-rank, top_k; ranks 1..n assigned last.

    Returns:
        The kept candidates per query and, per query, how many each filter removed
        (``fetched``, ``max_distance``, ``dedupe``, ``max_chunks_per_doc``, ``top_k``, ``reranked``).

    Raises:
        ConfigError: ``cfg.rerank_model`` is set without ``rerank_fn`` and ``queries``.
        ModelContractError: the re-ranker returned the wrong number of scores.
    """
    kept_all, removed_all = [], []
    for cands in candidates:
        cands = list(cands)
        removed = {"fetched": len(cands), "max_distance": 0, "dedupe": 0, "max_chunks_per_doc": 0, "top_k": 0,
                   "reranked": 0}
        steps = [("max_distance", cfg.max_distance, lambda cs, v: [c for c in cs if c.distance <= v]),
                 ("dedupe", cfg.dedupe_similarity, _dedupe), ("max_chunks_per_doc", cfg.max_chunks_per_doc, _per_doc)]
        for name, value, step in steps:
            if value is not None:
                before = len(cands)
                cands = step(cands, value)
                removed[name] = before - len(cands)
        kept_all.append(cands)
        removed_all.append(removed)
    if cfg.rerank_model:
        kept_all = _rerank(kept_all, cfg, queries, rerank_fn)
        for removed in removed_all:
            removed["reranked"] = 1
    out = []
    for cands, removed in zip(kept_all, removed_all):
        removed["top_k"] = max(0, len(cands) - cfg.top_k)
        out.append([dataclasses.replace(c, rank=r) for r, c in enumerate(cands[:cfg.top_k], start=1)])
    return out, removed_all


def _rerank(kept: list[list[Candidate]], cfg: RetrievalConfig, queries: Sequence[str] | None,
            rerank_fn: RerankFn | None) -> list[list[Candidate]]:
    if rerank_fn is None or queries is None or len(queries) != len(kept):
        raise ConfigError(f"retrieval.rerank_model={cfg.rerank_model!r} needs a rerank function and one query "
                          f"text per question, got {'no function' if rerank_fn is None else 'no/mismatched queries'}")
    pair_q = [queries[i] for i, cs in enumerate(kept) for _ in cs]
    pair_p = [c.text for cs in kept for c in cs]
    scores = np.asarray(rerank_fn(pair_q, pair_p), dtype=np.float64).reshape(-1) if pair_p else np.zeros(0)
    if scores.shape[0] != len(pair_p):
        raise ModelContractError(f"re-ranker: expected {len(pair_p)} scores, got {scores.shape[0]}")
    out, pos = [], 0
    for cs in kept:
        scored = [dataclasses.replace(c, score=float(scores[pos + i])) for i, c in enumerate(cs)]
        pos += len(cs)
        out.append(sorted(scored, key=lambda c: -c.score))  # stable: ties keep vector order
    return out


# ---- lineage and the one-call path ----

def filters_description(cfg: RetrievalConfig, where: Mapping[str, Any] | None,
                        where_document: Mapping[str, Any] | None) -> dict[str, Any]:
    """The retrieval and filters applied to one question, for the answers table's ``filters_json``."""
    out = {
        "mode": cfg.mode,
        "vector_search": cfg.vector_search,
        "pre_query": {"where": where},
        "in_query": {"where_document": where_document},
        "post_query": {"max_distance": cfg.max_distance, "dedupe_similarity": cfg.dedupe_similarity,
                       "max_chunks_per_doc": cfg.max_chunks_per_doc, "rerank_model": cfg.rerank_model,
                       "fetch_k": cfg.fetch_k, "top_k": cfg.top_k, "doc_aggregation": cfg.doc_aggregation},
    }
    if cfg.mode == "hybrid":
        out["fusion"] = {"method": cfg.fusion, "rrf_k": cfg.rrf_k, "weights": dict(cfg.weights)}
    return out


def retrieve_contexts(rows: Sequence[Mapping[str, Any]], query_embeddings: Any, *, cfg: RetrievalConfig,
                      index: Any, lexical: Any = None, query_texts: Sequence[str] | None = None,
                      space: str = "cosine", queries: Sequence[str] | None = None,
                      rerank_fn: RerankFn | None = None) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Filters per row, search (``cfg.mode``), post-filters: ``CONTEXT_STRUCT`` rows and a ``filters_json`` each.

    Args:
        rows: the questions as mappings (for ``where_columns`` / ``where_document_column``).
        query_embeddings: (len(rows), dim).
        index: the vector index (Chroma collection, sharded index or ExactIndex); lexical
            hits take their vectors from it.
        lexical: the :class:`~sparkrag.index.lexical.LexicalIndex`, for modes lexical and hybrid.
        query_texts: what BM25 searches for (default ``queries``).
        space: the vector index's distance (``chroma.space``), for lexical hits' distances.
        queries: question texts, needed when ``cfg.rerank_model`` is set.
    """
    check_retrieval_config(cfg)
    wheres = [build_where(cfg, r) for r in rows]
    docs = [build_where_document(cfg, r) for r in rows]
    cands = find_candidates(wheres, docs, query_embeddings, cfg=cfg, index=index, lexical=lexical,
                            query_texts=query_texts if query_texts is not None else queries, space=space)
    return finish_contexts(cands, wheres, docs, cfg=cfg, queries=queries, rerank_fn=rerank_fn)


def finish_contexts(cands: Sequence[Sequence[Candidate]], wheres: Sequence[Mapping[str, Any] | None],
                    docs: Sequence[Mapping[str, Any] | None], *, cfg: RetrievalConfig,
                    queries: Sequence[str] | None = None,
                    rerank_fn: RerankFn | None = None) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Post-query filters over fused candidates: ``CONTEXT_STRUCT`` rows and a ``filters_json`` per query."""
    kept, removed = apply_post_filters(cands, cfg, queries=queries, rerank_fn=rerank_fn)
    contexts = [[c.to_context() for c in cs] for cs in kept]
    lineage = [json.dumps({**filters_description(cfg, w, wd), "removed": r}, sort_keys=True, default=str)
               for w, wd, r in zip(wheres, docs, removed)]
    return contexts, lineage
