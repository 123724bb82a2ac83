"""Pre- and in-query filters built per question: ``retrieval.where`` / ``where_columns``
(metadata) and ``retrieval.where_document`` / ``where_document_column`` (text), in the
index's filter language (:mod:`sparkrag.index.where`). Post-query filters are applied by
:mod:`sparkrag.retrieval.search` after the candidates are fused.

Example:
    >>> build_where(RetrievalConfig(where_columns={"lang": "language"}), {"language": "fr"})
    {'lang': {'$eq': 'fr'}}
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sparkrag.config import RetrievalConfig
from sparkrag.errors import SchemaError
from sparkrag.index.where import check_where, check_where_document

__all__ = ["build_where", "build_where_document"]


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

