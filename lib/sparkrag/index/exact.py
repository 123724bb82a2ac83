"""Brute-force top-k with Chroma's ``query``/``get`` interface, filters and distances.

Used by ``retrieval.vector_search: exact`` (the whole chunks table broadcast to the
executors), by the evaluation job's ANN audit, and to give lexical hits their distance.

Example:
    >>> index = ExactIndex(["a"], [[1.0, 0.0]], ["text"], [{"doc_id": "d", "chunk_index": 0}], "cosine")
    >>> index.query(query_embeddings=[[1.0, 0.0]], n_results=1)["ids"]
    [['a']]
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from sparkrag.errors import ConfigError, SchemaError
from sparkrag.index.where import check_where, check_where_document, filter_mask
from sparkrag.index.vectorstore import to_chroma_metadata

__all__ = ["ExactIndex", "distances"]

_INCLUDE = ["documents", "metadatas", "distances", "embeddings"]


def distances(queries: Any, vectors: Any, space: str) -> np.ndarray:
    """(n_queries, n_vectors) distances as Chroma/hnswlib compute them.

    cosine ``1 - cos``, ip ``1 - dot``, l2 squared Euclidean.

    Raises:
        ConfigError: an unknown space.

    Example:
        >>> distances([[1.0, 0.0]], [[0.0, 2.0]], "l2").round(3).tolist()
        [[5.0]]
    """
    if space not in ("cosine", "ip", "l2"):
        raise ConfigError(f"chroma.space: expected 'cosine', 'ip' or 'l2', got {space!r}")
    q = np.asarray(queries, dtype=np.float64)
    v = np.asarray(vectors, dtype=np.float64)
    q = q.reshape(1, -1) if q.ndim == 1 else q
    if v.size == 0:
        return np.zeros((q.shape[0], 0))
    if space == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
    dots = q @ v.T
    if space == "l2":
        return np.maximum((q * q).sum(axis=1, keepdims=True) + (v * v).sum(axis=1)[None, :] - 2 * dots, 0.0)
    return 1.0 - dots


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
        self._row = {cid: i for i, cid in enumerate(self.ids)}

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
            mask = filter_mask(self.metadatas, self.documents, where, where_document)
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

    def get(self, ids: Sequence[str], include: Sequence[str] = ("documents", "metadatas", "embeddings")) -> dict[str, Any]:
        """Like ``Collection.get(ids=...)``: the rows with these ids (absent ids are skipped)."""
        rows = [self._row[i] for i in map(str, ids) if i in self._row]
        return {"ids": [self.ids[r] for r in rows], "documents": [self.documents[r] for r in rows],
                "metadatas": [self.metadatas[r] for r in rows], "embeddings": self.embeddings[rows]}
