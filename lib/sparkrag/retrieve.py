"""Top-k search with pre-, in- and post-query filters, over Chroma or an exact in-memory index.

* pre-query: a metadata ``where`` (static ``retrieval.where`` and per-row ``where_columns``);
* in-query: a ``where_document`` on the chunk text (``$contains`` ...);
* post-query, in this order: ``max_distance``, near-duplicate removal, ``max_chunks_per_doc``,
  optional cross-encoder re-rank, truncation to ``top_k``. What each removed is recorded.

:class:`ExactIndex` answers ``query`` like a Chroma collection (same filters, same
distances), so :func:`search` treats both alike.

Example:
    >>> contexts, filters_json = retrieve_contexts(rows, vectors, cfg=cfg, index=collection)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sparkrag.config import RetrievalConfig
from sparkrag.errors import ConfigError, ModelContractError, SchemaError, VectorStoreError
from sparkrag.models import resolve_device, resolve_model_path, worker_cached
from sparkrag.vectorstore import RESERVED_METADATA_KEYS, to_chroma_metadata

__all__ = [
    "Candidate",
    "ExactIndex",
    "RerankFn",
    "check_retrieval_config",
    "check_where",
    "check_where_document",
    "build_where",
    "build_where_document",
    "search",
    "apply_post_filters",
    "make_rerank_fn",
    "filters_description",
    "retrieve_contexts",
]

log = logging.getLogger(__name__)

RerankFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (queries, passages) -> scores
_INCLUDE = ["documents", "metadatas", "distances", "embeddings"]
_CMP = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
_DOC_OPS = ("$contains", "$not_contains", "$regex", "$not_regex")


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

    def to_context(self) -> dict[str, Any]:
        """The row of ``schemas.CONTEXT_STRUCT``."""
        return {"chunk_id": self.chunk_id, "doc_id": self.doc_id, "title": self.title, "text": self.text,
                "distance": float(self.distance), "rank": self.rank, "metadata": dict(self.metadata)}


# ---- filter specs: the rules Chroma 1.5 enforces, raised as ConfigError naming the option ----

def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    return "str" if isinstance(value, str) else None


def check_where(where: Any, *, option: str = "retrieval.where") -> None:
    """Raise ConfigError (naming ``option``) unless ``where`` is a filter Chroma accepts."""
    if not isinstance(where, Mapping) or len(where) != 1:
        raise ConfigError(f"{option}: expected a mapping with exactly one key (combine with $and/$or), got {where!r}")
    (key, value), = where.items()
    if key in ("$and", "$or"):
        if not isinstance(value, (list, tuple)) or len(value) < 2:
            raise ConfigError(f"{option}.{key}: expected a list of at least two filters, got {value!r}")
        for i, sub in enumerate(value):
            check_where(sub, option=f"{option}.{key}[{i}]")
        return
    if not isinstance(key, str) or not key or key.startswith("$"):
        raise ConfigError(f"{option}: {key!r} is not a metadata key or $and/$or")
    if isinstance(value, Mapping) and len(value) != 1:
        raise ConfigError(f"{option}.{key}: expected exactly one operator, got {dict(value)!r}")
    op, operand = next(iter(value.items())) if isinstance(value, Mapping) else ("$eq", value)
    if op in ("$eq", "$ne"):
        ok = _kind(operand) is not None
    elif op in _CMP:
        ok = _kind(operand) == "num"
    elif op in ("$in", "$nin"):
        ok = (isinstance(operand, (list, tuple)) and len(operand) > 0 and _kind(operand[0]) is not None
              and all(type(x) is type(operand[0]) for x in operand))
    else:
        raise ConfigError(f"{option}.{key}: unsupported operator {op!r} (use $eq $ne $gt $gte $lt $lte $in $nin; "
                          "text filters go in retrieval.where_document)")
    if not ok:
        raise ConfigError(f"{option}.{key}.{op}: invalid operand {operand!r} ($gt.. take numbers, $in/$nin a "
                          "non-empty list of one type, $eq/$ne a string, number or bool)")


def check_where_document(where_document: Any, *, option: str = "retrieval.where_document") -> None:
    """Raise ConfigError (naming ``option``) unless ``where_document`` is a filter Chroma accepts."""
    if not isinstance(where_document, Mapping) or len(where_document) != 1:
        raise ConfigError(f"{option}: expected a mapping with exactly one operator, got {where_document!r}")
    (op, operand), = where_document.items()
    if op in ("$and", "$or"):
        if not isinstance(operand, (list, tuple)) or len(operand) < 2:
            raise ConfigError(f"{option}.{op}: expected a list of at least two filters, got {operand!r}")
        for i, sub in enumerate(operand):
            check_where_document(sub, option=f"{option}.{op}[{i}]")
    elif op not in _DOC_OPS:
        raise ConfigError(f"{option}: unsupported operator {op!r} (use {', '.join(_DOC_OPS)}, $and, $or)")
    elif not isinstance(operand, str) or not operand:
        raise ConfigError(f"{option}.{op}: expected a non-empty string, got {operand!r}")


def _match_where(where: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    (key, value), = where.items()
    if key == "$and":
        return all(_match_where(w, meta) for w in value)
    if key == "$or":
        return any(_match_where(w, meta) for w in value)
    op, operand = next(iter(value.items())) if isinstance(value, Mapping) else ("$eq", value)
    actual = meta.get(key)
    kind = _kind(actual)

    def equal(x: Any) -> bool:  # Chroma: ints and floats compare as numbers; bools only with bools
        return kind is not None and kind == _kind(x) and actual == x

    if op in _CMP:
        return kind == "num" and bool(_CMP[op](actual, operand))
    if op in ("$in", "$nin"):
        hit = any(equal(x) for x in operand)
    else:
        hit = equal(operand)
    return hit if op in ("$eq", "$in") else not hit  # $ne/$nin also match a missing key


def _match_document(where_document: Mapping[str, Any], text: str) -> bool:
    (op, operand), = where_document.items()
    if op == "$and":
        return all(_match_document(w, text) for w in operand)
    if op == "$or":
        return any(_match_document(w, text) for w in operand)
    hit = operand in text if op in ("$contains", "$not_contains") else re.search(operand, text) is not None
    return hit if op in ("$contains", "$regex") else not hit


class ExactIndex:
    """Brute-force top-k with Chroma's ``query`` interface, filters and distances.

    Distances: cosine ``1 - cos``, ip ``1 - dot``, l2 squared Euclidean (as Chroma/hnswlib).

    Example:
        >>> index = ExactIndex(["a"], [[1.0, 0.0]], ["text"], [{"doc_id": "d", "chunk_index": 0}], "cosine")
        >>> index.query(query_embeddings=[[1.0, 0.0]], n_results=1)["ids"]
        [['a']]
    """

    def __init__(self, ids: Sequence[str], embeddings: Any, documents: Sequence[str],
                 metadatas: Sequence[Mapping[str, Any]], space: str) -> None:
        self.ids = [str(i) for i in ids]
        vectors = np.asarray(embeddings, dtype=np.float32)
        self.embeddings = vectors if vectors.ndim == 2 else vectors.reshape(len(self.ids), -1 if vectors.size else 0)
        if self.embeddings.shape[0] != len(self.ids):
            raise SchemaError(f"ExactIndex: expected {len(self.ids)} embeddings, got {self.embeddings.shape[0]}")
        self.documents, self.metadatas, self.space = list(documents), [dict(m or {}) for m in metadatas], space
        if not (len(self.documents) == len(self.metadatas) == len(self.ids)):
            raise SchemaError(f"ExactIndex: expected {len(self.ids)} documents and metadatas, "
                              f"got {len(self.documents)} and {len(self.metadatas)}")
        if space not in ("cosine", "ip", "l2"):
            raise ConfigError(f"chroma.space: expected 'cosine', 'ip' or 'l2', got {space!r}")
        vec = self.embeddings.astype(np.float64)
        self._vectors = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-30) if space == "cosine" else vec
        self._sq_norms = (vec * vec).sum(axis=1)
        self._masks: dict[str, np.ndarray] = {}
        self.metadata = {"embedding_dim": self.embeddings.shape[1], "space": space}

    @classmethod
    def from_chunks(cls, pdf: Any, space: str) -> "ExactIndex":
        """From a pandas frame of the chunks table (chunk_id, embedding, text, doc_id, chunk_index, title, metadata)."""
        metas = [to_chroma_metadata(d, i, t if isinstance(t, str) else None, dict(m) if m is not None else None)
                 for d, i, t, m in zip(pdf["doc_id"], pdf["chunk_index"], pdf["title"], pdf["metadata"])]
        vectors = np.stack([np.asarray(v, np.float32) for v in pdf["embedding"]]) if len(pdf) else np.zeros((0, 0))
        return cls(pdf["chunk_id"].tolist(), vectors, pdf["text"].tolist(), metas, space)

    def _mask(self, where: Mapping[str, Any] | None, where_document: Mapping[str, Any] | None) -> np.ndarray:
        key = json.dumps([where, where_document], sort_keys=True)
        mask = self._masks.get(key)
        if mask is None:
            mask = np.ones(len(self.ids), dtype=bool)
            if where:
                mask &= np.fromiter((_match_where(where, m) for m in self.metadatas), bool, len(self.ids))
            if where_document:
                mask &= np.fromiter((_match_document(where_document, d) for d in self.documents), bool, len(self.ids))
            if len(self._masks) >= 256:  # per-row filters: keep memory bounded
                self._masks.clear()
            self._masks[key] = mask
        return mask

    def query(self, query_embeddings: Any, n_results: int = 10, where: Mapping[str, Any] | None = None,
              where_document: Mapping[str, Any] | None = None, include: Sequence[str] = _INCLUDE) -> dict[str, Any]:
        """Like ``Collection.query``: per query, the ``n_results`` nearest rows passing the filters."""
        if where:
            check_where(where, option="where")
        if where_document:
            check_where_document(where_document, option="where_document")
        q = np.asarray(query_embeddings, dtype=np.float64)
        q = q.reshape(1, -1) if q.ndim == 1 else q
        rows = np.flatnonzero(self._mask(where, where_document))
        if self.space == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        dots = q @ self._vectors[rows].T
        if self.space == "l2":
            dist = np.maximum((q * q).sum(axis=1, keepdims=True) + self._sq_norms[rows][None, :] - 2 * dots, 0.0)
        else:
            dist = 1.0 - dots
        k = min(n_results, len(rows))
        out: dict[str, list[Any]] = {"ids": [], "distances": [], "documents": [], "metadatas": [], "embeddings": []}
        for d in dist:
            top = np.argpartition(d, k - 1)[:k] if 0 < k < len(d) else np.arange(len(d))[:k]
            top = top[np.argsort(d[top], kind="stable")]
            picked = rows[top]
            out["ids"].append([self.ids[i] for i in picked])
            out["distances"].append(d[top].tolist())
            out["documents"].append([self.documents[i] for i in picked])
            out["metadatas"].append([self.metadatas[i] for i in picked])
            out["embeddings"].append(self.embeddings[picked])
        return out


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
    if cfg.where is not None:
        check_where(cfg.where)
    if cfg.where_document is not None:
        check_where_document(cfg.where_document)
    for key in cfg.where_columns:
        if not key or key.startswith("$"):
            raise ConfigError(f"retrieval.where_columns: {key!r} is not a metadata key")


def _row_value(row: Mapping[str, Any], column: str, option: str) -> Any:
    if column not in row:
        raise SchemaError(f"{option}: the questions have no column {column!r}")
    value = row[column]
    value = value.item() if isinstance(value, np.generic) else value
    return None if value is None or (isinstance(value, float) and value != value) else value


def _combine(clauses: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    flat: list[dict[str, Any]] = []
    for clause in clauses:  # flatten nested $and so the filter stays readable in filters_json
        flat.extend(clause["$and"] if set(clause) == {"$and"} else [dict(clause)])
    return None if not flat else flat[0] if len(flat) == 1 else {"$and": flat}


def build_where(cfg: RetrievalConfig, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metadata filter for one question: ``cfg.where`` AND ``key == row[column]`` per ``where_columns``.

    A null row value puts no restriction on its key.

    Example:
        >>> cfg = RetrievalConfig(where={"source": "wiki"}, where_columns={"title": "topic"})
        >>> build_where(cfg, {"topic": "Delta"})
        {'$and': [{'source': 'wiki'}, {'title': {'$eq': 'Delta'}}]}
    """
    clauses: list[Mapping[str, Any]] = []
    if cfg.where:
        check_where(cfg.where)
        clauses.append(cfg.where)
    for key, column in cfg.where_columns.items():
        value = _row_value(row, column, f"retrieval.where_columns.{key}")
        if value is not None:
            clause = {key: {"$eq": value}}
            check_where(clause, option=f"retrieval.where_columns.{key}")
            clauses.append(clause)
    return _combine(clauses)


def build_where_document(cfg: RetrievalConfig, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The text filter for one question: ``cfg.where_document`` AND ``$contains`` row[where_document_column]."""
    clauses: list[Mapping[str, Any]] = []
    if cfg.where_document:
        check_where_document(cfg.where_document)
        clauses.append(cfg.where_document)
    if cfg.where_document_column:
        value = _row_value(row, cfg.where_document_column, "retrieval.where_document_column")
        if value is not None and str(value):
            clauses.append({"$contains": str(value)})
    return _combine(clauses)


# ---- search ----

def _candidates(res: Mapping[str, Any], j: int) -> list[Candidate]:
    out = []
    embeddings = res.get("embeddings")
    for k, chunk_id in enumerate(res["ids"][j]):
        meta = dict(res["metadatas"][j][k] or {})
        if "doc_id" not in meta:
            raise VectorStoreError(f"chunk {chunk_id!r} has no doc_id metadata: not written by sparkrag?")
        user = {key: str(v) for key, v in meta.items() if key not in RESERVED_METADATA_KEYS}
        emb = None if embeddings is None else np.asarray(embeddings[j][k], dtype=np.float32)
        out.append(Candidate(chunk_id=chunk_id, doc_id=str(meta["doc_id"]), title=meta.get("title"),
                             text=res["documents"][j][k] or "", distance=float(res["distances"][j][k]),
                             metadata=user, chunk_index=meta.get("chunk_index"), embedding=emb))
    return out


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
    groups: dict[str, list[int]] = {}
    for i, (w, wd) in enumerate(zip(wheres, docs)):
        groups.setdefault(json.dumps([w or None, wd or None], sort_keys=True, default=str), []).append(i)
    out: list[list[Candidate]] = [[] for _ in range(n)]
    for members in groups.values():
        where, where_doc = wheres[members[0]] or None, docs[members[0]] or None
        if where:
            check_where(where, option=f"retrieval.where (query {members[0]})")
        if where_doc:
            check_where_document(where_doc, option=f"retrieval.where_document (query {members[0]})")
        for lo in range(0, len(members), cfg.query_batch_size):
            chunk = members[lo:lo + cfg.query_batch_size]
            res = index.query(query_embeddings=q[chunk], n_results=cfg.fetch_k, where=where,
                              where_document=where_doc, include=_INCLUDE)
            if len(res["ids"]) != len(chunk):
                raise VectorStoreError(f"index query: expected results for {len(chunk)} queries, got {len(res['ids'])}")
            for j, i in enumerate(chunk):
                out[i] = _candidates(res, j)
    log.debug("searched %d queries in %d filter groups", n, len(groups))
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


def make_rerank_fn(model: str, *, batch_size: int = 16, max_length: int = 512,
                   device: str = "auto") -> Callable[[], RerankFn]:
    """A zero-argument, picklable loader of a cross-encoder scorer, loaded once per worker.

    The scorer takes (queries, passages) and returns one relevance score per pair (the
    logit for 1-label models, positive minus negative logit for 2-label ones); pairs are
    sorted by length into batches and scores returned in the input order.

    Example:
        >>> load = make_rerank_fn("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> load()(["what is delta?"], ["Delta Lake is a storage layer."])  # doctest: +SKIP
    """

    def load() -> RerankFn:
        return worker_cached(("cross-encoder", model, device, max_length, batch_size),
                             lambda: _load_cross_encoder(model, batch_size, max_length, device))

    return load


def _load_cross_encoder(model: str, batch_size: int, max_length: int, device: str) -> RerankFn:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    net = AutoModelForSequenceClassification.from_pretrained(path)
    where = resolve_device(device)
    net.to(where).eval()
    labels = int(net.config.num_labels)
    if labels not in (1, 2):
        raise ModelContractError(f"cross-encoder {model}: expected 1 or 2 labels, got {labels}")
    limit = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)

    def score(queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        order = sorted(range(len(passages)), key=lambda i: len(queries[i]) + len(passages[i]))
        out = np.zeros(len(passages), dtype=np.float32)
        with torch.inference_mode():
            for lo in range(0, len(order), batch_size):
                idx = order[lo:lo + batch_size]
                enc = tokenizer([queries[i] for i in idx], [passages[i] for i in idx], padding=True,
                                truncation="longest_first", max_length=limit, return_tensors="pt").to(where)
                logits = net(**enc).logits
                if tuple(logits.shape) != (len(idx), labels):
                    raise ModelContractError(f"cross-encoder {model}: expected logits ({len(idx)}, {labels}), "
                                             f"got {tuple(logits.shape)}")
                s = logits[:, 0] if labels == 1 else logits[:, 1] - logits[:, 0]
                out[idx] = s.float().cpu().numpy()
        return out

    return score


# ---- lineage and the one-call path ----

def filters_description(cfg: RetrievalConfig, where: Mapping[str, Any] | None,
                        where_document: Mapping[str, Any] | None) -> dict[str, Any]:
    """The filters applied to one question, for the answers table's ``filters_json``."""
    return {
        "mode": cfg.mode,
        "pre_query": {"where": where},
        "in_query": {"where_document": where_document},
        "post_query": {"max_distance": cfg.max_distance, "dedupe_similarity": cfg.dedupe_similarity,
                       "max_chunks_per_doc": cfg.max_chunks_per_doc, "rerank_model": cfg.rerank_model,
                       "fetch_k": cfg.fetch_k, "top_k": cfg.top_k},
    }


def retrieve_contexts(rows: Sequence[Mapping[str, Any]], query_embeddings: Any, *, cfg: RetrievalConfig,
                      index: Any, queries: Sequence[str] | None = None,
                      rerank_fn: RerankFn | None = None) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Filters per row, search, post-filters: ``CONTEXT_STRUCT`` rows and a ``filters_json`` per question.

    Args:
        rows: the questions as mappings (for ``where_columns`` / ``where_document_column``).
        query_embeddings: (len(rows), dim).
        queries: question texts, needed when ``cfg.rerank_model`` is set.
    """
    check_retrieval_config(cfg)
    wheres = [build_where(cfg, r) for r in rows]
    docs = [build_where_document(cfg, r) for r in rows]
    cands = search(index, query_embeddings, cfg=cfg, where_per_query=wheres, where_document_per_query=docs)
    kept, removed = apply_post_filters(cands, cfg, queries=queries, rerank_fn=rerank_fn)
    contexts = [[c.to_context() for c in cs] for cs in kept]
    lineage = [json.dumps({**filters_description(cfg, w, wd), "removed": r}, sort_keys=True, default=str)
               for w, wd, r in zip(wheres, docs, removed)]
    return contexts, lineage
