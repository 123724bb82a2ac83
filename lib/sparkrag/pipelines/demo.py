"""The demo's pipeline (`make demo`, ``jobs/demo.py``): load the bundled sample into Delta,
ingest it, answer its questions, and print what a newcomer should see: question / answer /
top source, where every table and index is, and one SQL query over the answers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from sparkrag.config import RagConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from sparkrag.delta import Tables

__all__ = ["run_demo"]

EXAMPLE_SQL = """
SELECT c.doc_id AS most_cited_document, count(*) AS citations
FROM answers LATERAL VIEW explode(contexts) t AS c
WHERE run_id = 'demo' AND c.rank = 1
GROUP BY c.doc_id ORDER BY citations DESC, most_cited_document LIMIT 5
"""


def run_demo(spark: "SparkSession", cfg: RagConfig, sample: Path) -> None:
    """Ingest and answer ``sample`` (documents.jsonl, questions.jsonl; loaded once) and print
    the results. Rerunning changes nothing: ingest is incremental, the answer run resumes."""
    from sparkrag.delta import open_tables
    from sparkrag.pipelines.answer import run_answer
    from sparkrag.pipelines.ingest import run_ingest

    start = time.perf_counter()
    tables = open_tables(spark, cfg.tables)
    _load_sample(spark, tables, cfg, sample)
    ingest = run_ingest(spark, cfg)
    answer = run_answer(spark, cfg)
    _show(spark, tables, cfg)
    print(f"\ningest: {ingest['counts']['chunks_embedded']} chunks embedded "
          f"({ingest['counts']['documents_unchanged']} documents unchanged); "
          f"answer: {answer['counts']['questions']} questions answered in this run; "
          f"total {time.perf_counter() - start:.0f} s")


def _load_sample(spark: "SparkSession", tables: "Tables", cfg: RagConfig, sample: Path) -> None:
    for name, table in (("documents", cfg.names.documents), ("questions", cfg.names.questions)):
        if not tables.exists(table):
            tables.write(spark.read.json(str(sample / f"{name}.jsonl")), table, mode="overwrite")


def _show(spark: "SparkSession", tables: "Tables", cfg: RagConfig) -> None:
    """Answers of the demo run (54 rows: the bundled sample), the tables, one SQL query."""
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
