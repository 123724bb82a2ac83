"""The filter language of every index: Chroma's ``where`` / ``where_document`` rules.

The same specs drive Chroma (passed through), :class:`sparkrag.index.exact.ExactIndex` and
the lexical index (evaluated here with :func:`filter_mask`), so a filter means the same
thing in every retrieval mode. Malformed filters raise ConfigError naming the option.
:mod:`sparkrag.retrieval.filters` builds them per question.

Example:
    >>> filter_mask([{"lang": "en"}, {"lang": "fr"}], ["a", "b"], {"lang": "fr"}, None).tolist()
    [False, True]
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from sparkrag.errors import ConfigError

__all__ = ["check_where", "check_where_document", "match_where", "match_document", "filter_mask"]

_CMP = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
_DOC_OPS = ("$contains", "$not_contains", "$regex", "$not_regex")

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


def match_where(where: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    (key, value), = where.items()
    if key == "$and":
        return all(match_where(w, meta) for w in value)
    if key == "$or":
        return any(match_where(w, meta) for w in value)
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


def match_document(where_document: Mapping[str, Any], text: str) -> bool:
    (op, operand), = where_document.items()
    if op == "$and":
        return all(match_document(w, text) for w in operand)
    if op == "$or":
        return any(match_document(w, text) for w in operand)
    hit = operand in text if op in ("$contains", "$not_contains") else re.search(operand, text) is not None
    return hit if op in ("$contains", "$regex") else not hit


def filter_mask(metadatas: Sequence[Mapping[str, Any]], documents: Sequence[str],
                where: Mapping[str, Any] | None, where_document: Mapping[str, Any] | None) -> np.ndarray:
    """Which rows pass ``where`` (on their metadata) and ``where_document`` (on their text)."""
    n = len(metadatas)
    mask = np.ones(n, dtype=bool)
    if where:
        mask &= np.fromiter((match_where(where, m) for m in metadatas), bool, n)
    if where_document:
        mask &= np.fromiter((match_document(where_document, d) for d in documents), bool, n)
    return mask
