"""Fusing ranked lists from several retrievers (dense, lexical) into one.

* ``rrf``, reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): each list adds
  ``weight / (k + rank)``; only ranks matter, so BM25 scores and distances need no
  calibration against each other.
* ``weighted``: each list's relevances are min-max scaled to [0, 1] within the query, then
  summed with the weights (a chunk missing from a list adds 0 for it).

Ties are broken by the best rank a chunk got in any list, then by retriever order, so a
rerun fuses identically.

Example:
    >>> [(cid, round(score, 4), ranks) for cid, score, ranks in
    ...  fuse_rankings({"dense": [("a", -0.1), ("b", -0.2)], "lexical": [("b", 9.0)]})]
    [('b', 0.0325, {'dense': 2, 'lexical': 1}), ('a', 0.0164, {'dense': 1})]
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

from sparkrag.errors import ConfigError

__all__ = ["fuse_rankings", "check_fusion"]

RETRIEVERS = ("dense", "lexical")


def check_fusion(method: str, k: int, weights: Mapping[str, float], *, option: str = "retrieval") -> None:
    """Raise ConfigError naming the option when the fusion settings are unusable."""
    if method not in ("rrf", "weighted"):
        raise ConfigError(f"{option}.fusion: expected 'rrf' or 'weighted', got {method!r}")
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


def fuse_rankings(rankings: Mapping[str, Sequence[tuple[str, float]]], *,
                  method: Literal["rrf", "weighted"] = "rrf", k: int = 60,
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
    for name in order:
        weight = float(weights.get(name, 1.0))
        scaled = _scaled(rankings[name]) if method == "weighted" else {}
        for rank, (cid, _) in enumerate(rankings[name], start=1):
            if name in ranks.get(cid, {}):
                continue  # a retriever lists a chunk once; keep its best rank
            ranks.setdefault(cid, {})[name] = rank
            gain = weight / (k + rank) if method == "rrf" else weight * scaled[cid]
            scores[cid] = scores.get(cid, 0.0) + gain

    def key(cid: str) -> tuple[float, int, int]:
        best = min(ranks[cid].items(), key=lambda item: (item[1], order.index(item[0])))
        return (-scores[cid], best[1], order.index(best[0]))

    return [(cid, scores[cid], ranks[cid]) for cid in sorted(scores, key=key)]
