"""BM25 postings whose corpus statistics come from outside: one shard scores like the whole corpus.

A BM25 score needs three corpus-wide figures: the number of documents ``N``, the mean
document length ``avgdl`` and each term's document frequency ``df``. bm25s bakes its own
corpus's figures into the matrix it stores, so a shard of a sharded index would score with
its shard's figures, not the corpus's. :class:`Postings` stores raw term frequencies and
document lengths instead, and :meth:`Postings.scores` takes the figures as
:class:`FieldStats`: the shard's own (a one-shard index), or the sum over every shard
(computed by a Spark aggregate at ingest). Only a shard whose chunks changed is rebuilt;
the statistics are re-summed, and every shard scores with them at query time.

The arithmetic is bm25s's ``lucene`` method step for step (idf ``log(1 + (N - df + 0.5) /
(df + 0.5))`` rounded to float32, ``tf / (k1 * (1 - b + b * dl / avgdl) + tf)`` in float64,
each term's contribution rounded to float32 and summed in float32 in query-token order), so
a score equals bm25s's bit for bit on the same corpus (``tests/index/test_bm25.py``).

Example:
    >>> p = Postings.build([["zephyrine", "valve"], ["water", "pump"]])
    >>> [round(float(s), 3) for s in p.scores(["valve"], p.local_stats(), k1=1.5, b=0.75)]
    [0.693, 0.0]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["Postings", "FieldStats"]

_CACHE_TERMS = 4096  # per-term contributions kept per field (common query terms repeat)


@dataclass(frozen=True)
class FieldStats:
    """A field's corpus figures: documents, total length (tokens) and ``df(term)``."""

    n_docs: int
    total_len: int
    df: Callable[[str], int] = field(compare=False)
    key: str = "local"  # names these figures in the per-term cache ("local": the field's own)

    @property
    def avgdl(self) -> float:
        # bm25s takes np.mean of the integer lengths: the exact sum divided once, in float64.
        return float(np.float64(self.total_len) / np.float64(self.n_docs)) if self.n_docs else 1.0


class Postings:
    """One field of an index: per term, the documents holding it and how often; per document, its length."""

    def __init__(self, terms: Sequence[str], indptr: np.ndarray, docs: np.ndarray, tf: np.ndarray,
                 lengths: np.ndarray) -> None:
        self.terms = list(terms)
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.docs = np.asarray(docs, dtype=np.int32)
        self.tf = np.asarray(tf, dtype=np.float32)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.term_id = {t: i for i, t in enumerate(self.terms)}
        self._cache: dict[tuple[Any, ...], np.ndarray] = {}

    @classmethod
    def build(cls, token_lists: Sequence[Sequence[str]]) -> "Postings":
        """From each document's tokens (strings, repeats kept)."""
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(t, len(vocab)) for t in tokens] for tokens in token_lists]
        return cls.from_ids(ids, vocab)

    @classmethod
    def from_ids(cls, token_ids: Sequence[Sequence[int]], vocab: Mapping[str, int]) -> "Postings":
        """From each document's token ids into ``vocab`` (bm25s's ``tokenize(return_ids=True)``)."""
        n_docs = len(token_ids)
        lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=n_docs)
        flat = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int64, count=int(lengths.sum()))
        doc_of = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
        pairs, tf = np.unique(flat * max(n_docs, 1) + doc_of, return_counts=True)  # sorted by term, then doc
        term_of, docs = pairs // max(n_docs, 1), pairs % max(n_docs, 1)
        used = np.unique(term_of)  # drop vocabulary entries no document holds
        names = np.empty(len(vocab), dtype=object)
        for token, i in vocab.items():
            names[i] = token
        remap = np.full(len(vocab), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        counts = np.bincount(remap[term_of], minlength=len(used)) if len(used) else np.zeros(0, dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return cls(names[used].tolist(), indptr, docs, tf, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def doc_frequencies(self) -> np.ndarray:
        """Per term of :attr:`terms`, the documents holding it."""
        return np.diff(self.indptr)

    def local_stats(self) -> FieldStats:
        """This field's own corpus figures (an index that is the whole corpus)."""
        df = self.doc_frequencies()
        return FieldStats(len(self), int(self.lengths.sum()), lambda t: int(df[self.term_id[t]]) if t in self.term_id else 0)

    def _contribution(self, term_id: int, term: str, stats: FieldStats, k1: float, b: float) -> np.ndarray:
        key = (term_id, stats.key, stats.n_docs, stats.total_len, k1, b)
        hit = self._cache.get(key)
        if hit is None:
            df = max(int(stats.df(term)), 1)  # this shard holds the term: the corpus does too
            idf = np.float32(math.log(1 + (stats.n_docs - df + 0.5) / (df + 0.5)))
            lo, hi = self.indptr[term_id], self.indptr[term_id + 1]
            tf = self.tf[lo:hi].astype(np.float64)
            tfc = tf / (k1 * ((1 - b) + b * self.lengths[self.docs[lo:hi]] / stats.avgdl) + tf)
            hit = (idf * tfc).astype(np.float32)
            if len(self._cache) >= _CACHE_TERMS:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def scores(self, tokens: Sequence[str], stats: FieldStats, *, k1: float, b: float) -> np.ndarray:
        """float32 BM25 score of every document for the query ``tokens`` (repeats count, as in bm25s)."""
        out = np.zeros(len(self), dtype=np.float32)
        for token in tokens:
            term_id = self.term_id.get(token)
            if term_id is not None:
                lo, hi = self.indptr[term_id], self.indptr[term_id + 1]
                out[self.docs[lo:hi]] += self._contribution(term_id, token, stats, k1, b)
        return out

    # ---- incremental change: keep some documents, append others ----

    def triples(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(terms, term id, document, tf) of every posting."""
        term_of = np.repeat(np.arange(len(self.terms), dtype=np.int64), np.diff(self.indptr))
        return self.terms, term_of, self.docs.astype(np.int64), self.tf

    @classmethod
    def merge(cls, parts: Sequence[tuple["Postings", np.ndarray]]) -> "Postings":
        """The documents ``keep`` (a boolean mask) of each part, in part order: one set of postings.

        What an incremental rebuild uses: the kept documents' postings are reused as they are,
        only new documents are tokenized.
        """
        vocab: dict[str, int] = {}
        term_ids, docs, tfs, lengths = [], [], [], []
        offset = 0
        for postings, keep in parts:
            keep = np.asarray(keep, dtype=bool)
            new_index = np.cumsum(keep) - 1 + offset  # old document -> its position in the merge
            terms, term_of, doc_of, tf = postings.triples()
            local = np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms), dtype=np.int64, count=len(terms))
            kept = keep[doc_of] if len(doc_of) else np.zeros(0, dtype=bool)
            term_ids.append(local[term_of[kept]])
            docs.append(new_index[doc_of[kept]])
            tfs.append(tf[kept])
            lengths.append(postings.lengths[keep])
            offset += int(keep.sum())
        term_of = np.concatenate(term_ids) if term_ids else np.zeros(0, dtype=np.int64)
        doc_of = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
        tf = np.concatenate(tfs) if tfs else np.zeros(0, dtype=np.float32)
        used = np.unique(term_of)
        remap = np.full(len(vocab), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        order = np.lexsort((doc_of, remap[term_of])) if len(term_of) else np.zeros(0, dtype=np.int64)
        names = np.empty(len(vocab), dtype=object)
        for token, i in vocab.items():
            names[i] = token
        counts = np.bincount(remap[term_of], minlength=len(used)) if len(used) else np.zeros(0, dtype=np.int64)
        return cls(names[used].tolist(), np.concatenate([[0], np.cumsum(counts)]), doc_of[order], tf[order],
                   np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64))

    # ---- storage: one .npz and the terms beside it ----

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}indptr": self.indptr, f"{prefix}docs": self.docs, f"{prefix}tf": self.tf,
                f"{prefix}lengths": self.lengths}

    @classmethod
    def from_arrays(cls, terms: Sequence[str], arrays: Mapping[str, np.ndarray], prefix: str) -> "Postings":
        return cls(terms, arrays[f"{prefix}indptr"], arrays[f"{prefix}docs"], arrays[f"{prefix}tf"],
                   arrays[f"{prefix}lengths"])
