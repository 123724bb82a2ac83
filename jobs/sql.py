"""sparkrag-sql: run SQL over the project's tables (answers, runs, rejects...) on either Delta backend.

    sparkrag-sql "SELECT run_id, count(*) AS n FROM answers GROUP BY run_id"
    sparkrag-sql --file resources/sql/unanswered_questions.sql --param run_id=20240101-abc
    sparkrag-sql --file run_summary --format csv > runs.csv     (a shipped query, by name)
    sparkrag-sql --list                                         (the shipped queries)
    spark-submit jobs/sql.py --config resources/config/local.yaml --file resources/sql/run_diff.sql

Every table of the config's ``names`` section is a view named after its key: documents,
questions, chunks, answers, runs, rejects, metrics (tables not created yet are skipped).
Named parameters (``:run_id`` in the query) come from ``--param name=value``; values are
strings (cast in SQL when a number is needed: ``LIMIT CAST(:top AS INT)``). A query's
leading comment may declare defaults, one parameter per line::

    --   :run_id (default '')  the answer run; '' means the latest
    --   :doc_id               required: no default
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

try:  # one file for spark-submit (a script) and the wheel (sparkrag.jobs.sql)
    from sparkrag.jobs._common import base_parser, parse, rag_config_from_args
except ImportError:  # pragma: no cover - running from a checkout without the package installed
    from _common import base_parser, parse, rag_config_from_args  # type: ignore[no-redef]

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def build_parser():
    parser = base_parser("sparkrag-sql", __doc__)
    parser.add_argument("query", nargs="?", help="one SQL statement (or use --file)")
    parser.add_argument("--file", metavar="SQL", help="a .sql file, or the name of a shipped query (see --list)")
    parser.add_argument("--list", action="store_true", help="print the shipped queries and exit")
    parser.add_argument("--param", metavar="NAME=VALUE", action="append", default=[],
                        help="a named parameter for :NAME markers; repeatable")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table",
                        help="table (fixed width), csv, or json (one object per line)")
    parser.add_argument("--max-rows", type=int, default=200, metavar="N", help="rows to print at most; 0: all")
    parser.add_argument("--max-width", type=int, default=60, metavar="N", help="table format: widest cell")
    return parser


def main(argv: Sequence[str] | None = None, spark: "SparkSession | None" = None) -> int:
    """Entry point of ``sparkrag-sql``: prints the rows, returns 0. Bad options, a missing
    parameter or an unknown view exit with status 2 and a one-line error on stderr."""
    from pyspark.errors import AnalysisException

    from sparkrag.errors import SparkragError
    from sparkrag.pipelines.sql import parse_params, render_sql, shipped_queries
    from sparkrag.spark import get_spark

    parser = build_parser()
    args = parse(parser, argv)
    if args.list:  # no Spark needed
        print("\n".join(f"{name:<24} {title}" for name, title in shipped_queries()))
        return 0
    if (args.query is None) == (args.file is None):
        parser.error("give exactly one of QUERY or --file")
    try:
        cfg = rag_config_from_args(args)
        text, truncated = render_sql(spark or get_spark(cfg.spark), cfg, query=args.query, file=args.file,
                                     params=parse_params(args.param), fmt=args.format,
                                     max_rows=args.max_rows, max_width=args.max_width)
    except (SparkragError, AnalysisException) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(text)
    if truncated and args.format != "table":
        print(f"{parser.prog}: output cut at --max-rows {args.max_rows}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])
