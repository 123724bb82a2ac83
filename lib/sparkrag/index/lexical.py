"""The BM25 lexical index: built by the ingest job from the chunks table, searched by the answer job.

Why bm25s and not Chroma: the installed ChromaDB (1.5.9) runs neither its Search API
(``NotImplementedError: Search is not implemented for Local Chroma``) nor sparse vector
indexes (``Sparse vector indexing is not enabled in local``) outside Chroma Cloud, and
this project must run on a laptop. bm25s is a small numpy BM25 (Lucene scoring) whose
figures on SQuAD-like data are in issue #7.

Layout under ``lexical.path`` (a folder beside the Chroma directory)::

    manifest.json        {"version": "v-...", "chunks_version": 7, "fingerprint": ..., "chunks": n}
    v-<time>-<id>/       bm25s arrays + chunks.parquet (chunk_id, text, metadata_json)
                         + title/ (bm25s arrays of the chunks' titles, when titles are indexed)

What is indexed (issue #16, measured on squad2-train10's tuning half; see LexicalConfig):
lower-case words, accents folded (``fold_accents``), stopwords dropped, Snowball-stemmed
(``stemmer``), and each chunk's title (its metadata ``title``) as a second field whose
BM25 score is added with ``title_weight``. Queries are tokenized the same way.

A build writes a new version folder, then replaces ``manifest.json`` atomically
(``os.replace``): a reader resolves the manifest once and never sees a half-built index.
The index is rebuilt from the whole chunks table whenever that table's version moved, so
changed and deleted chunks leave it in the same run that changes the table (BM25's
document frequencies are global, so a rebuild is also what keeps scores exact).

Filters mean what they mean in Chroma: the same ``where``/``where_document`` specs are
evaluated over each chunk's Chroma metadata and text (:func:`sparkrag.index.where.filter_mask`).

Example:
    >>> index = LexicalIndex.build(["a", "b"], ["the Zephyrine valve", "a water pump"],
    ...                            [{"doc_id": "d1"}, {"doc_id": "d2"}], LexicalConfig())
    >>> index.query(["zephyrine"], n_results=2)["ids"]
    [['a']]
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from sparkrag.config import LexicalConfig
from sparkrag.errors import ConfigError, SchemaError, VectorStoreError
from sparkrag.index.where import check_where, check_where_document, filter_mask
from sparkrag.models import worker_cached

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["LexicalIndex", "fold_accents", "read_manifest", "current_version_dir", "sync_lexical_index",
           "make_lexical_fn", "ship_lexical_index"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_FORMAT = 2  # bump when the folder layout changes: old indexes are rebuilt (2: title field, stemming)
_KEEP_VERSIONS = 2  # the current one and the one before (a reader may still be on it)


def fold_accents(text: str) -> str:
    """``text`` without combining marks after NFKD ("Beyoncé" -> "Beyonce")."""
    import unicodedata

    if text.isascii():
        return text
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def _stemmer(language: str) -> Any:
    """A PyStemmer Snowball stemmer, once per process (None for "")."""
    if not language:
        return None
    import Stemmer

    try:
        return worker_cached(("sparkrag.index.lexical.stemmer", language), lambda: Stemmer.Stemmer(language))
    except KeyError as exc:
        raise ConfigError(f"lexical.stemmer: unknown language {language!r} "
                          f"(known: {', '.join(Stemmer.algorithms())})") from exc


def _tokenize(texts: Sequence[str], settings: Mapping[str, Any], *, return_ids: bool) -> Any:
    """bm25s tokens of ``texts`` as the index's settings say (an index of format 1 had no fold/stem keys)."""
    import bm25s

    texts = [fold_accents(t) for t in texts] if settings.get("fold_accents") else list(texts)
    return bm25s.tokenize(texts, stopwords=settings.get("stopwords") or None,
                          stemmer=_stemmer(settings.get("stemmer", "")), return_ids=return_ids, show_progress=False)


def _bm25(tokens: Any, k1: float, b: float) -> Any:
    """A bm25s index of ``tokens``, or None when the corpus has no term at all (bm25s cannot index it)."""
    import bm25s

    if not tokens.vocab:
        return None
    bm25 = bm25s.BM25(k1=k1, b=b)
    bm25.index(tokens, show_progress=False)
    return bm25


class LexicalIndex:
    """BM25 over chunk texts, with each chunk's Chroma metadata for pre-query filters.

    ``query`` answers like ``Collection.query`` but takes texts and returns BM25 ``scores``
    (higher is better); chunks sharing no term with the query (text or title) are never
    returned. ``title_bm25`` scores the chunks' titles, added with ``settings["title_weight"]``.
    """

    def __init__(self, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
                 bm25: Any, settings: Mapping[str, Any], title_bm25: Any = None) -> None:
        self.ids, self.documents = [str(i) for i in ids], list(documents)
        self.metadatas = [dict(m or {}) for m in metadatas]
        if not len(self.ids) == len(self.documents) == len(self.metadatas):
            raise SchemaError(f"LexicalIndex: expected {len(self.ids)} documents and metadatas, "
                              f"got {len(self.documents)} and {len(self.metadatas)}")
        self.bm25, self.settings, self.title_bm25 = bm25, dict(settings), title_bm25
        self._masks: dict[str, np.ndarray] = {}

    @classmethod
    def build(cls, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
              cfg: LexicalConfig) -> "LexicalIndex":
        """Tokenize and index ``documents``, and their metadata titles when ``cfg.title_weight`` > 0.

        Raises:
            ConfigError: ``cfg.title_weight`` is negative or ``cfg.stemmer`` unknown.
        """
        if not cfg.title_weight >= 0:
            raise ConfigError(f"lexical.title_weight: expected >= 0, got {cfg.title_weight!r}")
        settings = {"k1": cfg.k1, "b": cfg.b, "stopwords": cfg.stopwords, "stemmer": cfg.stemmer,
                    "fold_accents": cfg.fold_accents, "title_weight": cfg.title_weight, "format": _FORMAT}
        bm25 = _bm25(_tokenize(documents, settings, return_ids=True), cfg.k1, cfg.b)
        title_bm25 = None
        if cfg.title_weight > 0:
            titles = [str((m or {}).get("title") or "") for m in metadatas]
            title_bm25 = _bm25(_tokenize(titles, settings, return_ids=True), cfg.k1, cfg.b)
        return cls(ids, documents, metadatas, bm25, settings, title_bm25)

    def with_title_weight(self, weight: float) -> "LexicalIndex":
        """The same index scoring titles with ``weight`` (0: text only); arrays are shared, not copied.

        Only a weight > 0 on an index built with titles can score them.
        """
        copy = LexicalIndex.__new__(LexicalIndex)
        copy.__dict__.update(self.__dict__)
        copy.settings = {**self.settings, "title_weight": float(weight)}
        copy._masks = self._masks
        return copy

    def __len__(self) -> int:
        return len(self.ids)

    def _mask(self, where: Mapping[str, Any] | None, where_document: Mapping[str, Any] | None) -> np.ndarray | None:
        if not where and not where_document:
            return None
        key = json.dumps([where, where_document], sort_keys=True, default=str)
        if key not in self._masks:
            if len(self._masks) >= 256:  # per-row filters: keep memory bounded
                self._masks.clear()
            self._masks[key] = filter_mask(self.metadatas, self.documents, where, where_document)
        return self._masks[key]

    def query(self, query_texts: Sequence[str], n_results: int = 10, where: Mapping[str, Any] | None = None,
              where_document: Mapping[str, Any] | None = None) -> dict[str, list[list[Any]]]:
        """Per query, up to ``n_results`` chunks with a positive BM25 score, best first.

        Returns:
            ``{"ids", "scores", "documents", "metadatas"}``, one list per query.
        """
        if where:
            check_where(where, option="where")
        if where_document:
            check_where_document(where_document, option="where_document")
        mask = self._mask(where, where_document)
        out: dict[str, list[list[Any]]] = {"ids": [], "scores": [], "documents": [], "metadatas": []}
        for tokens in _tokenize(query_texts, self.settings, return_ids=False):
            picked, scores = self._top(tokens, n_results, mask)
            out["ids"].append([self.ids[i] for i in picked])
            out["scores"].append(scores)
            out["documents"].append([self.documents[i] for i in picked])
            out["metadatas"].append([self.metadatas[i] for i in picked])
        return out

    def _top(self, tokens: list[str], k: int, mask: np.ndarray | None) -> tuple[list[int], list[float]]:
        if self.bm25 is None or not tokens or k < 1:  # bm25s fails on a query with no token left
            return [], []
        scores = np.asarray(self.bm25.get_scores(tokens), dtype=np.float64)
        weight = float(self.settings.get("title_weight") or 0.0)
        if weight > 0 and self.title_bm25 is not None:  # BM25F-like: the fields' scores add up
            scores = scores + weight * np.asarray(self.title_bm25.get_scores(tokens), dtype=np.float64)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        order = hits[np.lexsort((hits, -scores[hits]))]  # best first; ties by position, so runs repeat
        return order.tolist(), scores[order].tolist()

    # ---- storage ----

    def save(self, folder: str) -> None:
        """Write the bm25s arrays and the chunk rows into ``folder`` (created)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(folder, exist_ok=True)
        if self.bm25 is not None:
            self.bm25.save(folder, show_progress=False)
        if self.title_bm25 is not None:
            self.title_bm25.save(os.path.join(folder, "title"), show_progress=False)
        rows = pa.table({"chunk_id": self.ids, "text": self.documents,
                         "metadata_json": [json.dumps(m, sort_keys=True) for m in self.metadatas]})
        pq.write_table(rows, os.path.join(folder, "chunks.parquet"))
        with open(os.path.join(folder, "settings.json"), "w", encoding="utf-8") as fh:
            json.dump(self.settings, fh)

    @classmethod
    def load(cls, folder: str) -> "LexicalIndex":
        """Read an index written by :meth:`save`.

        Raises:
            VectorStoreError: the folder is missing or incomplete.
        """
        import bm25s
        import pyarrow.parquet as pq

        try:
            with open(os.path.join(folder, "settings.json"), encoding="utf-8") as fh:
                settings = json.load(fh)
            rows = pq.read_table(os.path.join(folder, "chunks.parquet")).to_pydict()
        except (OSError, ValueError) as exc:
            raise VectorStoreError(f"lexical index at {folder} is missing or incomplete ({exc}); "
                                   "rerun the ingest job") from exc
        def bm25_in(where: str) -> Any:
            has_bm25 = os.path.exists(os.path.join(where, "params.index.json"))
            return bm25s.BM25.load(where, show_progress=False) if has_bm25 else None

        return cls(rows["chunk_id"], rows["text"], [json.loads(m) for m in rows["metadata_json"]], bm25_in(folder),
                   settings, bm25_in(os.path.join(folder, "title")))


# ---- versions and the manifest ----

def read_manifest(path: str) -> dict[str, Any] | None:
    """The published index's manifest under ``path``, or None when none was published."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def current_version_dir(path: str) -> str:
    """The folder of the published index under ``path``.

    Raises:
        VectorStoreError: nothing was published there (the message names ``lexical.path``).
    """
    manifest = read_manifest(path)
    if manifest is None or not os.path.isdir(os.path.join(path, manifest["version"])):
        raise VectorStoreError(f"no lexical index at {path} (lexical.path); run the ingest job with "
                               "lexical.enabled=true before retrieval.mode lexical or hybrid")
    # Absolute: executors that read it in place have another working directory on a cluster.
    return os.path.abspath(os.path.join(path, manifest["version"]))


def _fingerprint(cfg: LexicalConfig) -> str:
    return json.dumps({"k1": cfg.k1, "b": cfg.b, "stopwords": cfg.stopwords, "stemmer": cfg.stemmer,
                       "fold_accents": cfg.fold_accents, "title_weight": cfg.title_weight, "format": _FORMAT},
                      sort_keys=True)


def _publish(path: str, index: LexicalIndex, manifest: dict[str, Any]) -> str:
    """Write ``index`` as a new version, switch the manifest to it, drop versions beyond the last two."""
    version = f"v-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    staging = os.path.join(path, f".staging-{version}")
    index.save(staging)
    os.replace(staging, os.path.join(path, version))
    tmp = os.path.join(path, f".{MANIFEST}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({**manifest, "version": version}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(path, MANIFEST))  # the commit point
    older = sorted(d for d in os.listdir(path) if d.startswith("v-") and d != version)
    for old in older[:max(len(older) - (_KEEP_VERSIONS - 1), 0)]:  # names sort by build time
        shutil.rmtree(os.path.join(path, old), ignore_errors=True)
    for leftover in (d for d in os.listdir(path) if d.startswith(".staging-")):  # killed builds
        shutil.rmtree(os.path.join(path, leftover), ignore_errors=True)
    return version


def sync_lexical_index(chunks: "DataFrame | None", cfg: LexicalConfig, *, chunks_version: int | None) -> dict[str, int]:
    """Rebuild the index from ``chunks`` when the table (or the BM25 settings) changed since the last build.

    Args:
        chunks: the chunks table (None: no table yet, an empty index is published).
        chunks_version: its Delta version; equal to the manifest's means nothing to do.

    Returns:
        ``{"chunks": n, "rebuilt": 0 or 1}``.
    """
    if not cfg.enabled:
        return {}
    os.makedirs(cfg.path, exist_ok=True)
    manifest = read_manifest(cfg.path)
    fingerprint = _fingerprint(cfg)
    if (manifest is not None and manifest.get("chunks_version") == chunks_version
            and manifest.get("fingerprint") == fingerprint and os.path.isdir(os.path.join(cfg.path, manifest["version"]))):
        log.info("lexical index %s is current (chunks table version %s)", cfg.path, chunks_version)
        return {"chunks": int(manifest["chunks"]), "rebuilt": 0}
    start = time.perf_counter()
    ids, texts, metas = _chunk_rows(chunks)
    index = LexicalIndex.build(ids, texts, metas, cfg)
    version = _publish(cfg.path, index, {"chunks_version": chunks_version, "fingerprint": fingerprint,
                                         "chunks": len(ids), "created_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    log.info("lexical index %s/%s: %d chunks in %.1f s", cfg.path, version, len(ids), time.perf_counter() - start)
    return {"chunks": len(ids), "rebuilt": 1}


def _chunk_rows(chunks: "DataFrame | None") -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """chunk ids, texts and the metadata Chroma stores for them (doc_hash included, as the sync does)."""
    from sparkrag.index.sync import chroma_rows
    from sparkrag.spark import collect_arrow
    from sparkrag.index.vectorstore import to_chroma_metadata

    if chunks is None:
        return [], [], []
    rows = collect_arrow(chroma_rows(chunks).select("chunk_id", "text", "doc_id", "chunk_index", "title", "metadata"))
    rows = rows.to_pydict()
    metas = [to_chroma_metadata(d, i, t, dict(m or ()))  # Arrow maps arrive as lists of pairs
             for d, i, t, m in zip(rows["doc_id"], rows["chunk_index"], rows["title"], rows["metadata"])]
    return rows["chunk_id"], rows["text"], metas


# ---- executors ----

def ship_lexical_index(spark: "SparkSession", folder: str) -> str:
    """Ship the version ``folder`` to every executor (``addArchive``); returns the archive name."""
    import tarfile
    import tempfile

    from sparkrag.spark import ship_archive

    name = f"lexical-{os.path.basename(folder)}.tar.gz"
    archive = os.path.join(tempfile.mkdtemp(prefix="sparkrag-lexical-"), name)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    ship_archive(spark, archive)
    log.info("shipped lexical index %s (%.1f MB) to executors", name, os.path.getsize(archive) / 1e6)
    return name


def make_lexical_fn(folder: str, *, shipped: str | None = None) -> Callable[[], LexicalIndex]:
    """A zero-argument, picklable loader of the index in ``folder`` (or archive ``shipped``), once per worker."""

    def load() -> LexicalIndex:
        def read() -> LexicalIndex:
            if shipped is None:
                return LexicalIndex.load(folder)
            from pyspark import SparkFiles

            return LexicalIndex.load(SparkFiles.get(shipped))

        return worker_cached(("sparkrag.index.lexical", folder, shipped), read)

    return load
