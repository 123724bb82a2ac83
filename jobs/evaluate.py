"""Evaluation job: one answer run against the gold labels of the questions table -> metrics Delta table + report.

    spark-submit jobs/evaluate.py --config resources/config/local.yaml --questions rag.questions
    sparkrag-evaluate --run-id answer-20250101T000000-1a2b3c4d --report-dir reports/eval --ann-sample 200
    (Databricks) python_wheel_task: package_name sparkrag, entry_point sparkrag-evaluate

Measures retrieval recall@k and MRR, SQuAD exact match and F1 (answerable questions),
abstention precision/recall (unanswerable questions), latency and tokens, and audits the
HNSW index against exact search. Writes names.metrics, report.md with plots, and a row of
names.runs (job=evaluate).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

try:  # one file for spark-submit (a script) and the wheel (sparkrag.jobs.evaluate)
    from sparkrag.jobs._common import base_parser, entry_point, log_config, parse, rag_config_from_args
except ImportError:  # pragma: no cover - running from a checkout without the package installed
    from _common import base_parser, entry_point, log_config, parse, rag_config_from_args  # type: ignore[no-redef]

SHORTCUTS = {
    "questions": "names.questions",
    "answers_table": "names.answers",
    "metrics_table": "names.metrics",
    "collection": "chroma.collection",
    "chroma_path": "chroma.path",
}


def build_parser():
    from sparkrag.pipelines.evaluate import EvalOptions

    d = EvalOptions()
    parser = base_parser("sparkrag-evaluate", __doc__)
    parser.add_argument("--questions", metavar="TABLE",
                        help="questions Delta table with gold columns (names.questions)")
    parser.add_argument("--answers-table", metavar="TABLE", help="answers Delta table (names.answers)")
    parser.add_argument("--metrics-table", metavar="TABLE", help="metrics Delta table to append to (names.metrics)")
    parser.add_argument("--collection", metavar="NAME", help="Chroma collection audited (chroma.collection)")
    parser.add_argument("--chroma-path", metavar="DIR", help="embedded Chroma directory (chroma.path)")
    parser.add_argument("--run-id", metavar="ID", help="answer run to evaluate; default: the latest by created_at")
    parser.add_argument("--report-dir", metavar="DIR", default=d.report_dir,
                        help="report folder; {eval_run_id} is replaced; '' for none (default: %(default)s)")
    parser.add_argument("--ann-sample", metavar="N", type=int, default=d.ann_sample,
                        help="questions in the ANN audit; 0 disables it (default: %(default)s)")
    parser.add_argument("--ann-k", metavar="K", type=int, default=d.ann_k, help="ANN recall@K (default: %(default)s)")
    parser.add_argument("--compare-modes", metavar="MODE,MODE", default="",
                        help="retrieval modes compared side by side: dense, lexical, hybrid or a variant "
                             "(hybrid-rrf, hybrid-weighted, hybrid-zscore, hybrid-docmax, hybrid-docsum, "
                             "lexical-notitle, hybrid-notitle, hybrid-rrf-notitle); '' for none")
    parser.add_argument("--compare-sample", metavar="N", type=int, default=d.compare_sample,
                        help="questions in the mode comparison; 0: all with a gold document (default: %(default)s)")
    parser.add_argument("--ks", metavar="K,K", default=",".join(map(str, d.ks)),
                        help="recall@k cut-offs (default: %(default)s)")
    parser.add_argument("--gold-doc-column", metavar="COL", default=d.gold_doc_column,
                        help="gold document id column; '' disables retrieval metrics (default: %(default)s)")
    parser.add_argument("--gold-answers-column", metavar="COL", default=d.gold_answers_column,
                        help="gold answers array<string> column; '' disables EM/F1 (default: %(default)s)")
    parser.add_argument("--impossible-column", metavar="COL", default=d.impossible_column,
                        help="unanswerable flag column; '' disables abstention metrics (default: %(default)s)")
    return parser


def eval_options_from_args(args) -> "EvalOptions":
    """EvalOptions from the parsed flags ('' turns a gold column or the report off)."""
    from sparkrag.errors import ConfigError
    from sparkrag.pipelines.evaluate import EvalOptions

    try:
        ks = tuple(int(k) for k in args.ks.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"--ks: expected comma-separated integers, got {args.ks!r}") from None
    return EvalOptions(run_id=args.run_id, gold_doc_column=args.gold_doc_column or None,
                       gold_answers_column=args.gold_answers_column or None,
                       impossible_column=args.impossible_column or None, ks=ks, ann_sample=args.ann_sample,
                       ann_k=args.ann_k, report_dir=args.report_dir or None,
                       compare_modes=tuple(m.strip() for m in args.compare_modes.split(",") if m.strip()),
                       compare_sample=args.compare_sample)


def run(argv: Sequence[str] | None = None, spark=None) -> dict:
    """Parse ``argv``, run the job and return its record (for callers that want the figures)."""
    from sparkrag.pipelines.evaluate import evaluate_run
    from sparkrag.spark import get_spark

    args = parse(build_parser(), argv)
    cfg = rag_config_from_args(args, SHORTCUTS)
    log_config(cfg)
    opts = eval_options_from_args(args)
    logging.getLogger("sparkrag").info("evaluation options: %s", opts)
    result = evaluate_run(spark or get_spark(cfg.spark), cfg, opts)
    summary = {k: result[k] for k in ("eval_run_id", "run_id", "counts", "metrics")}
    summary["report"] = (result["report"] or {}).get("report.md")
    print(json.dumps(summary, indent=2, default=str))
    return result


main = entry_point(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
