"""Ingest job: Delta documents -> chunks -> embeddings on executors -> chunks Delta table -> ChromaDB.

    spark-submit jobs/ingest.py --config resources/config/local.yaml --documents rag.documents
    sparkrag-ingest --set names.documents=main.rag.documents --set chroma.mode=server
    (Databricks) python_wheel_task: package_name sparkrag, entry_point sparkrag-ingest

Incremental: a rerun embeds only new and changed documents and deletes the chunks of
changed, shrunk and vanished ones from Delta and Chroma; --full-refresh rebuilds all.
"""

from __future__ import annotations

import sys
from typing import Sequence

try:  # one file for spark-submit (a script) and the wheel (sparkrag.jobs.ingest)
    from sparkrag.jobs._common import base_parser, entry_point, run_rag_job
except ImportError:  # pragma: no cover - running from a checkout without the package installed
    from _common import base_parser, entry_point, run_rag_job  # type: ignore[no-redef]

SHORTCUTS = {
    "documents": "names.documents",
    "chunks_table": "names.chunks",
    "collection": "chroma.collection",
    "chroma_path": "chroma.path",
    "full_refresh": "ingest.full_refresh",
}


def build_parser():
    parser = base_parser("sparkrag-ingest", __doc__)
    parser.add_argument("--documents", metavar="TABLE", help="documents Delta table: path or catalog name (names.documents)")
    parser.add_argument("--chunks-table", metavar="TABLE", help="chunks Delta table to maintain (names.chunks)")
    parser.add_argument("--collection", metavar="NAME", help="Chroma collection (chroma.collection)")
    parser.add_argument("--chroma-path", metavar="DIR", help="embedded Chroma directory (chroma.path)")
    parser.add_argument("--full-refresh", action="store_true", help="re-embed everything and rebuild the collection")
    return parser


def run(argv: Sequence[str] | None = None, spark=None) -> dict:
    """Parse ``argv``, run the job and return its record (for callers that want the figures)."""
    from sparkrag.pipelines.ingest import run_ingest

    return run_rag_job(build_parser(), SHORTCUTS, run_ingest, argv, spark,
                       ("run_id", "status", "counts", "stage_seconds", "outputs"))


main = entry_point(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
