"""SQL over the project's tables (answers, runs, rejects...) on either Delta backend.

Every table of the config's ``names`` section is a view named after its key: documents,
questions, chunks, answers, runs, rejects, metrics (tables not created yet are skipped).
Named parameters (``:run_id`` in the query) are bound from a mapping; values are strings
(cast in SQL when a number is needed: ``LIMIT CAST(:top AS INT)``). A query's leading
comment may declare defaults, one parameter per line::

    --   :run_id (default '')  the answer run; '' means the latest
    --   :doc_id               required: no default

The command line is ``sparkrag-sql`` (``jobs/sql.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import decimal
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from sparkrag.config import RagConfig
from sparkrag.errors import ConfigError, TableError
from sparkrag.shipped import find_shipped, shipped_names

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from sparkrag.delta import Tables

__all__ = [
    "run_sql",
    "register_table_views",
    "query_parameters",
    "declared_defaults",
    "bind_parameters",
    "find_sql_file",
    "shipped_queries",
    "format_rows",
    "parse_params",
    "render_sql",
    "SQL_DIR",
]

log = logging.getLogger(__name__)

SQL_DIR = Path("resources") / "sql"  # shipped queries in a checkout; the wheel has them as package data
# A parameter declaration in a query's leading comment: "--   :name (default 'value')  text".
_DECLARED = re.compile(r"^--\s*:(?P<name>[A-Za-z_]\w*)\b(?:\s*\(default\s+'(?P<default>[^']*)'\))?")
# What the marker scanner skips: comments, string literals and quoted identifiers.
_SKIP = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`", re.S)
_MARKER = re.compile(r"(?<![:\w]):(?P<name>[A-Za-z_]\w*)")


# -- parameters -------------------------------------------------------------------------
def query_parameters(query: str) -> list[str]:
    """The named parameter markers (``:name``) of a query, in order of first use.

    Markers inside comments, string literals and quoted identifiers do not count, nor do
    ``::`` casts.

    Example:
        >>> query_parameters("SELECT * FROM t WHERE a = :a AND b::int = :b -- :c")
        ['a', 'b']
    """
    code = _SKIP.sub(lambda m: " " * len(m.group(0)), query)
    names: list[str] = []
    for match in _MARKER.finditer(code):
        if match.group("name") not in names:
            names.append(match.group("name"))
    return names


def declared_defaults(query: str) -> dict[str, str | None]:
    """Parameters declared in the query's leading comment block, with their defaults.

    Returns:
        name -> default value, or None for a declared parameter without a default (required).

    Example:
        >>> declared_defaults("-- Parameters:\\n--   :run_id (default '')  the run\\nSELECT 1")
        {'run_id': ''}
    """
    declared: dict[str, str | None] = {}
    for line in query.lstrip().splitlines():
        line = line.strip()
        if not line.startswith("--"):
            break  # the header ends at the first line of code
        match = _DECLARED.match(line)
        if match:
            declared[match.group("name")] = match.group("default")
    return declared


def bind_parameters(query: str, params: Mapping[str, Any] | None, *, source: str = "query") -> dict[str, Any]:
    """The ``args`` for ``spark.sql``: given values, then declared defaults.

    Raises:
        ConfigError: a marker has neither a value nor a default (naming it and how to pass
            it), or a given parameter is not used by the query (a typo would otherwise
            silently fall back to the default).

    Example:
        >>> bind_parameters("-- :n (default '5')\\nSELECT :n, :m", {"m": "x"})
        {'n': '5', 'm': 'x'}
    """
    params = dict(params or {})
    markers = query_parameters(query)
    defaults = declared_defaults(query)
    unknown = sorted(set(params) - set(markers))
    if unknown:
        takes = ", ".join(f":{m}" for m in markers) or "no parameters"
        raise ConfigError(f"{source}: unknown parameter(s) {', '.join(unknown)}; it takes {takes}")
    missing = [m for m in markers if m not in params and defaults.get(m) is None]
    if missing:
        raise ConfigError(
            f"{source}: missing value for parameter(s) {', '.join(':' + m for m in missing)}; "
            f"pass {' '.join(f'--param {m}=...' for m in missing)}"
        )
    return {m: params[m] if m in params else defaults[m] for m in markers}


# -- views ------------------------------------------------------------------------------
def register_table_views(spark: "SparkSession", cfg: RagConfig, tables: "Tables | None" = None) -> dict[str, str]:
    """Register every table of ``cfg.names`` as a temporary view named after its key.

    Returns:
        view -> table name for the views registered; tables that do not exist are skipped.

    Example:
        >>> register_table_views(spark, cfg)  # doctest: +SKIP
        {'answers': 'rag.answers', 'runs': 'rag.runs'}
    """
    from sparkrag.delta import open_tables

    tables = tables or open_tables(spark, cfg.tables)
    wanted = {f.name: getattr(cfg.names, f.name) for f in dataclasses.fields(cfg.names)}
    made = tables.register_views(wanted)
    log.info("views: %s; not created yet: %s", ", ".join(made) or "none",
             ", ".join(sorted(set(wanted) - set(made))) or "none")
    return {view: wanted[view] for view in made}


def _unknown_view_error(exc: Exception, cfg: RagConfig, tables: "Tables", views: dict[str, str]) -> TableError:
    params = getattr(exc, "getMessageParameters", lambda: {})() or {}
    name = params.get("relationName") or "a table"
    fields = [f.name for f in dataclasses.fields(cfg.names)]
    have = "; ".join(f"{v} = {views[v]} at {tables.location(views[v])}" for v in fields if v in views) or "none"
    absent = "; ".join(f"{v} = {getattr(cfg.names, v)} (no table at {tables.location(getattr(cfg.names, v))})"
                       for v in fields if v not in views) or "none"
    return TableError(f"the query reads {name}, which is not a view here. Views: {have}. "
                      f"Not created yet: {absent} (backend {tables.backend}, tables.root {cfg.tables.root})")


def run_sql(
    spark: "SparkSession",
    cfg: RagConfig,
    query: str,
    params: Mapping[str, Any] | None = None,
    *,
    tables: "Tables | None" = None,
    source: str = "query",
) -> "DataFrame":
    """Run one SQL statement over the project's tables, with named parameters.

    Args:
        spark: the session.
        cfg: the config whose ``tables`` and ``names`` say where the tables are.
        query: one SQL statement; ``:name`` markers are bound from ``params``, else from
            the defaults declared in its leading comment.
        params: parameter values (strings from the command line; any SQL literal type).
        tables: an open :class:`~sparkrag.delta.tables.Tables` to reuse.
        source: how errors name the query (e.g. its file).

    Returns:
        The (lazy) result DataFrame; the statement is parsed and analysed already.

    Raises:
        ConfigError: a parameter is missing or unknown.
        TableError: the query reads a table or view that does not exist (the message lists
            the views there are and where the missing tables would be).

    Example:
        >>> run_sql(spark, cfg, "SELECT count(*) FROM answers WHERE run_id = :r", {"r": "abc"})  # doctest: +SKIP
    """
    from pyspark.errors import AnalysisException

    from sparkrag.delta import open_tables

    args = bind_parameters(query, params, source=source)
    tables = tables or open_tables(spark, cfg.tables)
    views = register_table_views(spark, cfg, tables)
    statement = query.strip().rstrip(";").strip()
    try:
        return _sql_with_parameters(spark, statement, args)
    except AnalysisException as exc:
        if _condition(exc) == "TABLE_OR_VIEW_NOT_FOUND":
            raise _unknown_view_error(exc, cfg, tables, views) from exc
        raise


# Spark 4.1 binds parameters in the parser (SPARK-53573), but a parser injected by an
# extension (Delta's DeltaSqlParser: delta-io/delta#7640) drops them, so every marker stays
# unbound. The legacy setting binds them in the analyser, as Spark 4.0 and 3.5 always did.
_LEGACY_BINDING = "spark.sql.legacy.parameterSubstitution.constantsOnly"


def _condition(exc: Exception) -> str | None:
    """An AnalysisException's error condition (``getErrorClass`` on Spark 3.5)."""
    return getattr(exc, "getCondition", getattr(exc, "getErrorClass", lambda: None))()


def _sql_with_parameters(spark: "SparkSession", statement: str, args: dict[str, Any]) -> "DataFrame":
    """``spark.sql(statement, args)``; on an unbound parameter, once more with analyser binding."""
    from pyspark.errors import AnalysisException

    try:
        return spark.sql(statement, args=args or None)
    except AnalysisException as exc:
        if not args or _condition(exc) != "UNBOUND_SQL_PARAMETER":
            raise
    before = spark.conf.get(_LEGACY_BINDING, None)
    spark.conf.set(_LEGACY_BINDING, "true")
    try:  # classic Spark analyses in spark.sql(): the setting can be restored right after
        return spark.sql(statement, args=args)
    finally:
        if before is None:
            spark.conf.unset(_LEGACY_BINDING)
        else:
            spark.conf.set(_LEGACY_BINDING, before)


# -- files ------------------------------------------------------------------------------
def find_sql_file(name: str) -> Path:
    """A path as given, else a shipped query by name (``run_summary`` or ``run_summary.sql``).

    Shipped queries are found in the installed package as well as in a checkout
    (:func:`sparkrag.shipped.find_shipped`).

    Raises:
        ConfigError: nothing found; the message lists the shipped queries.
    """
    path = Path(name)
    if path.is_file():
        return path
    return find_shipped("sql", name, option="--file")


def shipped_queries() -> list[tuple[str, str]]:
    """(name, first line of its leading comment) for every shipped query, by name.

    Example:
        >>> dict(shipped_queries())["run_summary"].startswith("Run summary")
        True
    """
    out = []
    for name in shipped_names("sql"):
        first = find_shipped("sql", name, option="--file").read_text(encoding="utf-8").lstrip().splitlines()[:1]
        out.append((name, first[0].lstrip("-").strip() if first and first[0].startswith("--") else ""))
    return out


# -- output -----------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Rows, lists and maps as JSON-ready values."""
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


def _text(value: Any, *, null: str, precise: bool = False) -> str:
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if precise or not math.isfinite(value):
            return repr(value)
        # Readable, not exact: 4 decimals for ordinary magnitudes, 3 significant digits for tiny ones.
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (str, int, decimal.Decimal, dt.date)):
        return str(value)
    return json.dumps(_plain(value), ensure_ascii=False, default=str)


def _numeric(values: list[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool)
                                 for v in present)


def _table(columns: list[str], rows: Sequence[Sequence[Any]], max_width: int) -> str:
    def clip(text: str) -> str:
        text = " ".join(text.split("\n"))
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[clip(_text(v, null="NULL")) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    right = [_numeric([row[i] for row in rows]) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    out = [line(columns), "-+-".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def format_rows(
    columns: list[str],
    rows: Sequence[Sequence[Any]],
    fmt: Literal["table", "csv", "json"] = "table",
    *,
    max_width: int = 60,
) -> str:
    """Rows as a fixed-width table, CSV (nested values as JSON) or JSON lines.

    Example:
        >>> print(format_rows(["doc", "n"], [("a", 3), ("bb", 12)]))
        doc |  n
        ----+---
        a   |  3
        bb  | 12
    """
    if fmt == "table":
        return _table(columns, rows, max_width)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_text(v, null="", precise=True) for v in row] for row in rows)
        return buffer.getvalue().rstrip("\n")
    if fmt == "json":
        return "\n".join(json.dumps({c: _plain(v) for c, v in zip(columns, row)}, ensure_ascii=False, default=str)
                         for row in rows)
    raise ConfigError(f"--format: expected table, csv or json, got {fmt!r}")


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings (``--param``) as a mapping.

    Raises:
        ConfigError: an item without ``=`` or whose name is not a SQL identifier.
    """
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name.strip()):
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE with NAME a SQL identifier")
        params[name.strip()] = value
    return params


def render_sql(
    spark: "SparkSession",
    cfg: RagConfig,
    *,
    query: str | None = None,
    file: str | None = None,
    params: Mapping[str, Any] | None = None,
    fmt: Literal["table", "csv", "json"] = "table",
    max_rows: int = 200,
    max_width: int = 60,
) -> tuple[str, bool]:
    """Run one statement (``query``, or a ``file`` / shipped query name) and format its rows.

    Args:
        max_rows: rows to return at most (0: all); the table format ends with a row count.

    Returns:
        (the text to print, whether rows beyond ``max_rows`` were left out).

    Raises:
        ConfigError, TableError: as :func:`run_sql` and :func:`find_sql_file`.

    Example:
        >>> text, cut = render_sql(spark, cfg, file="run_summary", fmt="csv")  # doctest: +SKIP
    """
    source = "query"
    if file is not None:
        path = find_sql_file(file)
        query, source = path.read_text(encoding="utf-8"), str(path)
    if query is None:
        raise ConfigError("give a query or a file")
    df = run_sql(spark, cfg, query, params, source=source)
    rows = df.collect() if max_rows <= 0 else df.limit(max_rows + 1).collect()  # bounded by max_rows
    truncated = 0 < max_rows < len(rows)
    rows = rows[:max_rows] if max_rows > 0 else rows
    text = format_rows(df.columns, rows, fmt, max_width=max_width)
    if fmt == "table":
        more = f"; more exist, raise --max-rows (now {max_rows})" if truncated else ""
        text += f"\n({len(rows)} row{'' if len(rows) == 1 else 's'}{more})"
    return text, truncated
