"""One shard as its immutable base plus a delta, queried as one collection (:class:`SegmentedShard`).

An ingest that changes few chunks of a shard writes a delta beside it (:mod:`sparkrag.index.build`):
the added and changed chunks, and the base ids they hide. Readers open both
(:mod:`sparkrag.index.shards`) and query them through this class.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["SegmentedShard", "QUERY_KEYS"]

QUERY_KEYS = ("ids", "distances", "documents", "metadatas", "embeddings")


class SegmentedShard:
    """One shard as its base collection plus its delta (``query``, ``get``, ``count`` like a ``Collection``).

    The delta holds the chunks added or changed since the base was built; ``masked`` are
    the base's ids that are deleted or changed. A query asks the delta for ``n_results`` and
    the base for more than that, drops masked ids, and merges the two lists by distance (ties:
    base first); a query whose base list lost so many ids that fewer than ``n_results``
    remain asks the base again for more, up to ``n_results + len(masked)``, which always
    suffices. The answer is therefore the ``n_results`` nearest live chunks, as one rebuilt
    collection would give them (up to HNSW's approximation).
    """

    def __init__(self, base: Any, delta: Any, masked: frozenset[str]) -> None:
        self.base, self.delta, self.masked = base, delta, frozenset(masked)
        self.name = base.name
        self.metadata = base.metadata

    @property
    def configuration(self) -> Any:
        return self.base.configuration

    def count(self) -> int:
        """Live vectors: the base's, less the masked ones, plus the delta's."""
        return int(self.base.count()) - len(self.masked) + int(self.delta.count())

    def query(self, query_embeddings: Any, n_results: int = 10, where: Any = None, where_document: Any = None,
              include: Sequence[str] = ("documents", "metadatas", "distances")) -> dict[str, Any]:
        """Like ``Collection.query``: the ``n_results`` nearest live chunks per query, by distance."""
        q = np.asarray(query_embeddings, dtype=np.float32)
        q = q.reshape(1, -1) if q.ndim == 1 else q
        wanted = [k for k in include if k in QUERY_KEYS and k != "ids"]
        asked = list(dict.fromkeys([*wanted, "distances"]))
        search = {"where": where, "where_document": where_document, "include": asked}
        delta = (self.delta.query(query_embeddings=q, n_results=n_results, **search) if self.delta.count()
                 else {"ids": [[] for _ in q], **{k: [[] for _ in q] for k in asked}})
        base: list[dict[str, list[Any]]] = [{} for _ in q]
        todo, k = list(range(len(q))), n_results + min(len(self.masked), max(n_results, 8))
        while todo:
            res = self.base.query(query_embeddings=q[todo], n_results=k, **search)
            again = []
            for pos, j in enumerate(todo):
                keep = [r for r, cid in enumerate(res["ids"][pos]) if cid not in self.masked]
                base[j] = {key: [res[key][pos][r] for r in keep] for key in ("ids", *asked)}
                exhausted = len(res["ids"][pos]) < k or k >= n_results + len(self.masked)
                if len(keep) < n_results and not exhausted:
                    again.append(j)
            todo, k = again, min(2 * k, n_results + len(self.masked))
        out: dict[str, Any] = {"ids": [], **{key: [] for key in wanted}}
        for j in range(len(q)):
            hits = sorted([(float(d), 0, r) for r, d in enumerate(base[j]["distances"])]
                          + [(float(d), 1, r) for r, d in enumerate(delta["distances"][j])])[:n_results]
            parts = (base[j], {key: delta[key][j] for key in ("ids", *asked)})
            out["ids"].append([parts[seg]["ids"][r] for _, seg, r in hits])
            for key in wanted:
                values = [parts[seg][key][r] for _, seg, r in hits]
                out[key].append(np.asarray(values) if key == "embeddings" and values else values)
        out["included"] = wanted
        return out

    def get(self, ids: Sequence[str] | None = None, include: Sequence[str] = ("documents", "metadatas"),
            where: Any = None, where_document: Any = None, limit: int | None = None) -> dict[str, Any]:
        """Like ``Collection.get``: the live rows of ``ids`` (or matching the filters), the delta's for a changed id."""
        wanted = [k for k in include if k in ("embeddings", "documents", "metadatas")]
        more = None if limit is None else limit + len(self.masked)
        parts = [self.base.get(ids=ids, where=where, where_document=where_document, include=wanted, limit=more),
                 self.delta.get(ids=ids, where=where, where_document=where_document, include=wanted, limit=limit)]
        rows = [(p, r) for n, p in enumerate(parts) for r, cid in enumerate(p["ids"])
                if n == 1 or cid not in self.masked][:limit]
        out: dict[str, Any] = {"ids": [p["ids"][r] for p, r in rows]}
        for key in wanted:
            values = [p[key][r] for p, r in rows]
            out[key] = np.asarray(values) if key == "embeddings" and values else values
        out["included"] = wanted
        return out
