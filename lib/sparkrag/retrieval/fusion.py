"""Fusing ranked lists from several retrievers (dense, lexical) into one.

* ``rrf``, reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): each list adds
  ``weight / (k + rank)``; only ranks matter, so BM25 scores and distances need no
  calibration against each other.
* ``weighted``: each list's relevances are min-max scaled to [0, 1] within the query, then
  summed with the weights (a chunk missing from a list adds 0 for it).
* ``zscore``: each list's relevances are standardised within the query (minus the list's
  mean, over its standard deviation), then summed with the weights; a chunk missing from a
  list gets that list's lowest z (it ranked below all of them). Unlike ranks, z-scores keep
  how far ahead a confident retriever's top hit is, and unlike min-max they do not stretch a
  flat list of equally weak hits over [0, 1] (issue #16; Bruch, Gai & Ingber, "An Analysis of
  Fusion Functions for Hybrid Retrieval", TOIS 2023, find convex score combinations beat RRF).
  Distribution-based score fusion (mean +- 3 sd scaled to [0, 1]) ranks identically: it is
  an affine map of the z-score with the same slope for every list.

:func:`aggregate_documents` then optionally ranks chunks by their document's combined score
(``max`` or ``sum`` of its chunks'), keeping a document's chunks together.

Ties are broken by the best rank a chunk got in any list, then by retriever order, so a
rerun fuses identically.

Example:
    >>> [(cid, round(score, 4), ranks) for cid, score, ranks in
    ...  fuse_rankings({"dense": [("a", -0.1), ("b", -0.2)], "lexical": [("b", 9.0)]})]
    [('b', 0.0325, {'dense': 2, 'lexical': 1}), ('a', 0.0164, {'dense': 1})]
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np

from sparkrag.errors import ConfigError

__all__ = ["fuse_rankings", "check_fusion", "aggregate_documents", "FUSION_METHODS", "DOC_AGGREGATIONS"]

RETRIEVERS = ("dense", "lexical")
FUSION_METHODS = ("rrf", "weighted", "zscore")
DOC_AGGREGATIONS = ("none", "max", "sum")


def check_fusion(method: str, k: int, weights: Mapping[str, float], *, option: str = "retrieval") -> None:
    """Raise ConfigError naming the option when the fusion settings are unusable."""
    if method not in FUSION_METHODS:
        raise ConfigError(f"{option}.fusion: expected one of {', '.join(FUSION_METHODS)}, got {method!r}")
    if k < 0:
        raise ConfigError(f"{option}.rrf_k: expected >= 0, got {k}")
    unknown = sorted(set(weights) - set(RETRIEVERS))
    if unknown:
        raise ConfigError(f"{option}.weights: unknown retriever(s) {unknown} (known: {', '.join(RETRIEVERS)})")
    bad = {name: w for name, w in weights.items() if not w >= 0}
    if bad:
        raise ConfigError(f"{option}.weights: expected non-negative numbers, got {bad}")


def _scaled(ranking: Sequence[tuple[str, float]]) -> dict[str, float]:
    values = [float(r) for _, r in ranking]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    return {cid: (1.0 if hi == lo else (float(r) - lo) / (hi - lo)) for cid, r in ranking}


def _standardised(ranking: Sequence[tuple[str, float]]) -> tuple[dict[str, float], float]:
    """z-score of each chunk's relevance within the list, and the lowest z (for chunks not in it)."""
    values = np.asarray([float(r) for _, r in ranking], dtype=np.float64)
    if not len(values):
        return {}, 0.0
    sd = float(values.std())
    z = (values - values.mean()) / sd if sd > 0 else np.zeros_like(values)  # one hit, or all tied: no evidence
    return {cid: float(v) for (cid, _), v in zip(ranking, z)}, float(z.min())


def fuse_rankings(rankings: Mapping[str, Sequence[tuple[str, float]]], *,
                  method: Literal["rrf", "weighted", "zscore"] = "rrf", k: int = 60,
                  weights: Mapping[str, float] | None = None) -> list[tuple[str, float, dict[str, int]]]:
    """One fused list from per-retriever rankings of one query.

    Args:
        rankings: retriever name -> ``(chunk_id, relevance)`` best first (relevance: higher
            is better, e.g. minus the distance, or the BM25 score; only ``weighted`` reads it).
        method, k, weights: see the module docstring; a retriever missing from ``weights``
            weighs 1.

    Returns:
        ``(chunk_id, fused score, {retriever: 1-based rank})`` best first.
    """
    weights = weights or {}
    check_fusion(method, k, weights)
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    order = list(rankings)
    floors: dict[str, float] = {}  # zscore: what a chunk missing from a list gets from it
    for name in order:
        weight = float(weights.get(name, 1.0))
        scaled = _scaled(rankings[name]) if method == "weighted" else {}
        if method == "zscore":
            scaled, floor = _standardised(rankings[name])
            floors[name] = weight * floor
        for rank, (cid, _) in enumerate(rankings[name], start=1):
            if name in ranks.get(cid, {}):
                continue  # a retriever lists a chunk once; keep its best rank
            ranks.setdefault(cid, {})[name] = rank
            gain = weight / (k + rank) if method == "rrf" else weight * scaled[cid]
            scores[cid] = scores.get(cid, 0.0) + gain
    for cid in scores:
        scores[cid] += sum(floor for name, floor in floors.items() if name not in ranks[cid])

    def key(cid: str) -> tuple[float, int, int]:
        best = min(ranks[cid].items(), key=lambda item: (item[1], order.index(item[0])))
        return (-scores[cid], best[1], order.index(best[0]))

    return [(cid, scores[cid], ranks[cid]) for cid in sorted(scores, key=key)]


def aggregate_documents(fused: Sequence[tuple[str, float, dict[str, int]]], doc_of: Mapping[str, str], *,
                        how: Literal["none", "max", "sum"] = "none") -> list[tuple[str, float, dict[str, int]]]:
    """Rank chunks by their document's combined fused score; a document's chunks stay together.

    Args:
        fused: :func:`fuse_rankings`'s output, best first.
        doc_of: chunk_id -> doc_id.
        how: ``none`` (chunk order unchanged), ``max`` (a document is as good as its best
            chunk) or ``sum`` (CombSUM: its best chunk's score plus the positive
            scores of its other retrieved chunks).

    Returns:
        The same tuples, documents best first, each document's chunks best first.

    Example:
        >>> [c for c, _, _ in aggregate_documents([("a1", 3.0, {}), ("b1", 2.0, {}), ("b2", 2.0, {})],
        ...                                       {"a1": "a", "b1": "b", "b2": "b"}, how="sum")]
        ['b1', 'b2', 'a1']
    """
    if how not in DOC_AGGREGATIONS:
        raise ConfigError(f"retrieval.doc_aggregation: expected one of {', '.join(DOC_AGGREGATIONS)}, got {how!r}")
    if how == "none":
        return list(fused)
    combined: dict[str, float] = {}
    first: dict[str, int] = {}
    for pos, (cid, score, _) in enumerate(fused):
        doc = doc_of[cid]
        first.setdefault(doc, pos)
        if doc not in combined:
            combined[doc] = score
        elif how == "max":
            combined[doc] = max(combined[doc], score)
        else:  # z-scores go negative: a weak extra chunk must not pull its document down
            combined[doc] += max(score, 0.0)
    return [item for _, item in sorted(enumerate(fused), key=lambda p: (-combined[doc_of[p[1][0]]],
                                                                          first[doc_of[p[1][0]]], p[0]))]
