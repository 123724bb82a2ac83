"""The BM25 lexical index of one shard (or of a whole small corpus): build, query, save, load.

Why not Chroma: the installed ChromaDB (1.5.9) runs neither its Search API
(``NotImplementedError: Search is not implemented for Local Chroma``) nor sparse vector
indexes (``Sparse vector indexing is not enabled in local``) outside Chroma Cloud, and
this project must run on a laptop. Tokenizing is bm25s's; the postings and scoring are
:mod:`sparkrag.index.bm25` (bm25s's Lucene scoring, with corpus figures from outside, so a
shard scores like the whole corpus). The sharded, published index that the ingest job
keeps and the answer job reads is :mod:`sparkrag.index.lexical_shards`.

A saved index (one folder)::

    settings.json      k1, b, stopwords, stemmer, fold_accents, title_weight, format
    postings.npz       text_* and title_* arrays (indptr, docs, tf, lengths)
    terms.parquet      field, term, df (the terms of both fields, in postings order)
    chunks.parquet     chunk_id, text, metadata_json

What is indexed (issue #16, measured on squad2-train10's tuning half; see LexicalConfig):
lower-case words, accents folded (``fold_accents``), stopwords dropped, Snowball-stemmed
(``stemmer``), and each chunk's title (its metadata ``title``) as a second field whose
BM25 score is added with ``title_weight``. Queries are tokenized the same way.

Filters mean what they mean in Chroma: the same ``where``/``where_document`` specs are
evaluated over each chunk's Chroma metadata and text (:func:`sparkrag.index.where.filter_mask`).

Example:
    >>> index = LexicalIndex.build(["a", "b"], ["the Zephyrine valve", "a water pump"],
    ...                            [{"doc_id": "d1"}, {"doc_id": "d2"}], LexicalConfig())
    >>> index.query(["zephyrine"], n_results=2)["ids"]
    [['a']]
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from sparkrag.config import LexicalConfig
from sparkrag.errors import ConfigError, SchemaError, VectorStoreError
from sparkrag.index.bm25 import FieldStats, Postings
from sparkrag.index.where import check_where, check_where_document, filter_mask
from sparkrag.models import worker_cached

__all__ = ["LexicalIndex", "fold_accents", "settings_of", "tokenize"]

log = logging.getLogger(__name__)

_FORMAT = 3  # bump when the folder layout changes: old indexes are rebuilt (2: title field, stemming; 3: postings)


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


class LexicalIndex:
    """BM25 over chunk texts, with each chunk's Chroma metadata for pre-query filters.

    ``query`` answers like ``Collection.query`` but takes texts and returns BM25 ``scores``
    (higher is better); chunks sharing no term with the query (text or title) are never
    returned. The title field's score is added with ``settings["title_weight"]``.
    ``stats`` (text and title :class:`~sparkrag.index.bm25.FieldStats`) are the corpus
    figures to score with: the index's own by default, the whole corpus's for a shard.
    """

    def __init__(self, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[Mapping[str, Any]],
                 text: Postings, settings: Mapping[str, Any], title: Postings | None = None) -> None:
        self.ids, self.documents = [str(i) for i in ids], list(documents)
        self.metadatas = [dict(m or {}) for m in metadatas]
        if not len(self.ids) == len(self.documents) == len(self.metadatas) == len(text):
            raise SchemaError(f"LexicalIndex: expected {len(self.ids)} documents, metadatas and postings, "
                              f"got {len(self.documents)}, {len(self.metadatas)} and {len(text)}")
        self.text, self.title, self.settings = text, title, dict(settings)
        self.stats = (text.local_stats(), title.local_stats() if title is not None else None)
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
        settings = settings_of(cfg)
        text = _postings(documents, settings)
        title = None
        if cfg.title_weight > 0:
            title = _postings([str((m or {}).get("title") or "") for m in metadatas], settings)
        return cls(ids, documents, metadatas, text, settings, title)

    def updated(self, keep: Sequence[bool], ids: Sequence[str], documents: Sequence[str],
                metadatas: Sequence[Mapping[str, Any]]) -> "LexicalIndex":
        """This index with only the chunks ``keep`` marks, plus new ones: only the new ones are tokenized.

        Equal to :meth:`build` over the same chunks in the same order (same postings, same scores).
        """
        return self.merged(keep, LexicalIndex.build(ids, documents, metadatas, _config_of(self.settings)))

    def merged(self, keep: Sequence[bool], added: "LexicalIndex") -> "LexicalIndex":
        """The chunks ``keep`` marks, then every chunk of ``added`` (built with the same settings): nothing is
        tokenized, postings are reused as they are."""
        keep = np.asarray(keep, dtype=bool)
        text = Postings.merge([(self.text, keep), (added.text, np.ones(len(added), dtype=bool))])
        title = None
        if self.title is not None and added.title is not None:
            title = Postings.merge([(self.title, keep), (added.title, np.ones(len(added), dtype=bool))])
        kept = np.flatnonzero(keep)
        return LexicalIndex([self.ids[i] for i in kept] + added.ids, [self.documents[i] for i in kept] + added.documents,
                            [self.metadatas[i] for i in kept] + added.metadatas, text, self.settings, title)

    def with_title_weight(self, weight: float) -> "LexicalIndex":
        """The same index scoring titles with ``weight`` (0: text only); arrays are shared, not copied.

        Only a weight > 0 on an index built with titles can score them.
        """
        copy = LexicalIndex.__new__(LexicalIndex)
        copy.__dict__.update(self.__dict__)
        copy.settings = {**self.settings, "title_weight": float(weight)}
        return copy

    def with_stats(self, text: FieldStats, title: FieldStats | None) -> "LexicalIndex":
        """The same index scoring with the corpus figures ``text`` and ``title`` (a shard of a larger index)."""
        copy = self.with_title_weight(self.settings.get("title_weight") or 0.0)
        copy.stats = (text, title)
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
        for tokens in tokenize(query_texts, self.settings):
            picked, scores = self._top(tokens, n_results, mask)
            out["ids"].append([self.ids[i] for i in picked])
            out["scores"].append(scores)
            out["documents"].append([self.documents[i] for i in picked])
            out["metadatas"].append([self.metadatas[i] for i in picked])
        return out

    def _top(self, tokens: list[str], k: int, mask: np.ndarray | None) -> tuple[list[int], list[float]]:
        if not tokens or k < 1 or not len(self):
            return [], []
        k1, b = float(self.settings["k1"]), float(self.settings["b"])
        scores = self.text.scores(tokens, self.stats[0], k1=k1, b=b).astype(np.float64)
        weight = float(self.settings.get("title_weight") or 0.0)
        if weight > 0 and self.title is not None and self.stats[1] is not None:  # BM25F-like: fields add up
            scores = scores + weight * self.title.scores(tokens, self.stats[1], k1=k1, b=b).astype(np.float64)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        order = hits[np.lexsort((hits, -scores[hits]))]  # best first; ties by position, so runs repeat
        return order.tolist(), scores[order].tolist()

    def term_frequencies(self) -> dict[str, list[Any]]:
        """Columns ``field``, ``term``, ``df`` of both fields: what a sharded index sums over its shards."""
        out: dict[str, list[Any]] = {"field": [], "term": [], "df": []}
        for name, postings in (("text", self.text), ("title", self.title)):
            if postings is not None:
                out["field"] += [name] * len(postings.terms)
                out["term"] += postings.terms
                out["df"] += postings.doc_frequencies().tolist()
        return out

    # ---- storage ----

    def save(self, folder: str) -> None:
        """Write the postings, the terms and the chunk rows into ``folder`` (created)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(folder, exist_ok=True)
        arrays = self.text.arrays("text_")
        if self.title is not None:
            arrays.update(self.title.arrays("title_"))
        np.savez(os.path.join(folder, "postings.npz"), **arrays)
        pq.write_table(pa.table(self.term_frequencies()), os.path.join(folder, "terms.parquet"))
        rows = pa.table({"chunk_id": self.ids, "text": self.documents,
                         "metadata_json": [json.dumps(m, sort_keys=True) for m in self.metadatas]})
        pq.write_table(rows, os.path.join(folder, "chunks.parquet"))
        with open(os.path.join(folder, "settings.json"), "w", encoding="utf-8") as fh:
            json.dump(self.settings, fh)

    @classmethod
    def load(cls, folder: str) -> "LexicalIndex":
        """Read an index written by :meth:`save`.

        Raises:
            VectorStoreError: the folder is missing, incomplete or of an older format.
        """
        rows, (text, title), settings = _read(folder, ["chunk_id", "text", "metadata_json"])
        return cls(rows["chunk_id"], rows["text"], [json.loads(m) for m in rows["metadata_json"]], text,
                   settings, title)

    @staticmethod
    def load_postings(folder: str) -> tuple[list[str], Postings, Postings | None]:
        """The chunk ids and the text and title postings of a saved index, without its texts and metadata."""
        rows, (text, title), _ = _read(folder, ["chunk_id"])
        return rows["chunk_id"], text, title


def _read(folder: str, columns: list[str]) -> tuple[dict[str, list[Any]], tuple[Postings, Postings | None],
                                                    dict[str, Any]]:
    """``columns`` of a saved index's chunk rows, its (text, title) postings and its settings."""
    import pyarrow.parquet as pq

    try:
        with open(os.path.join(folder, "settings.json"), encoding="utf-8") as fh:
            settings = json.load(fh)
        if settings.get("format") != _FORMAT:
            raise ValueError(f"format {settings.get('format')!r}, this sparkrag reads {_FORMAT}")
        rows = pq.read_table(os.path.join(folder, "chunks.parquet"), columns=columns).to_pydict()
        terms = pq.read_table(os.path.join(folder, "terms.parquet")).to_pydict()
        with np.load(os.path.join(folder, "postings.npz")) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError) as exc:
        raise VectorStoreError(f"lexical index at {folder} is missing, incomplete or outdated ({exc}); "
                               "rerun the ingest job") from exc
    fields = {name: [t for f, t in zip(terms["field"], terms["term"]) if f == name] for name in ("text", "title")}
    text = Postings.from_arrays(fields["text"], arrays, "text_")
    title = Postings.from_arrays(fields["title"], arrays, "title_") if "title_indptr" in arrays else None
    return rows, (text, title), settings


def settings_of(cfg: LexicalConfig) -> dict[str, Any]:
    """What an index is built with: equal settings, interchangeable indexes."""
    return {"k1": cfg.k1, "b": cfg.b, "stopwords": cfg.stopwords, "stemmer": cfg.stemmer,
            "fold_accents": cfg.fold_accents, "title_weight": cfg.title_weight, "format": _FORMAT}


def _config_of(settings: Mapping[str, Any]) -> LexicalConfig:
    return LexicalConfig(k1=settings["k1"], b=settings["b"], stopwords=settings["stopwords"],
                         stemmer=settings["stemmer"], fold_accents=settings["fold_accents"],
                         title_weight=settings["title_weight"])


def _postings(texts: Sequence[str], settings: Mapping[str, Any]) -> Postings:
    tokens = _tokenize(texts, settings, return_ids=True)
    return Postings.from_ids(tokens.ids, tokens.vocab)


def tokenize(texts: Sequence[str], settings: Mapping[str, Any]) -> list[list[str]]:
    """Each text's tokens as the index with ``settings`` sees them."""
    return _tokenize(texts, settings, return_ids=False)
