"""Answer quality side by side: the extractive answerer vs an LLM (default SmolLM2-135M-Instruct,
chat template) on one SQuAD 2.0 sample, through the real jobs (ingest once, then answer and
evaluate per generator, in one Spark session).

Prints, per generator: exact match, F1, abstention precision/recall (unanswerable questions
included in the random sample), and questions/s of the answer job (retrieval + generation +
writes; the LLM's one-off load included, reported separately when it is in the logs).

    nice .venv/bin/python benchmarks/answer_quality.py --data /work/shared/data/squad2-train10 \\
        --sample 120 --seed 0 --top-k 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from squad_eval import load_jsonl_tables  # noqa: E402

FIGURES = ("exact_match", "f1", "abstention_precision", "abstention_recall", "abstention_rate")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/squad2-train10"))
    parser.add_argument("--workdir", type=Path, help="tables, Chroma and reports (default: a fresh temp dir)")
    parser.add_argument("--sample", type=int, default=120, help="questions drawn at random (--seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=3, help="contexts per question (retrieval.top_k)")
    parser.add_argument("--generators", default="extractive,llm", help="comma-separated generator.kind values")
    parser.add_argument("--model", default="smollm2", help="the LLM for --generators llm")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from sparkrag.config import SparkConfig
    from sparkrag.jobs.answer import run as answer_main
    from sparkrag.jobs.evaluate import run as evaluate_main
    from sparkrag.jobs.ingest import run as ingest_main
    from sparkrag.spark import get_spark

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sparkrag-quality-"))
    overrides = [f"tables.root={workdir / 'tables'}", f"chroma.path={workdir / 'chroma'}", "chroma.collection=squad",
                 f"retrieval.top_k={args.top_k}", f"retrieval.fetch_k={max(20, 2 * args.top_k)}",
                 "retrieval.mode=hybrid", *args.overrides]
    common = [item for o in overrides for item in ("--set", o)]
    spark = get_spark(SparkConfig(app_name="bench-answer-quality"))
    rows = {}
    try:
        counts = load_jsonl_tables(spark, args.data, overrides, sample=args.sample, seed=args.seed)
        print(f"loaded {counts}", flush=True)
        ingest_main([*common, "--full-refresh"], spark=spark)
        for kind in args.generators.split(","):
            argv_ = [*common, "--generator", kind, "--run-id", f"quality-{kind}"]
            if kind != "extractive":
                argv_ += ["--model", args.model]
            started = time.perf_counter()
            answer = answer_main(argv_, spark=spark)
            seconds = time.perf_counter() - started
            result = evaluate_main([*common, "--run-id", answer["run_id"], "--ann-sample", "0", "--compare-modes", "",
                                    "--ks", "1,5", "--report-dir", str(workdir / f"report-{kind}")], spark=spark)
            metrics = result["metrics"]
            rows[kind] = {"model_id": answer.get("model_id") or answer["run_id"],
                          "questions": answer["counts"]["questions"], "answer_seconds": round(seconds, 1),
                          "questions_per_s": answer["counts"]["questions"] / seconds,
                          **{k: metrics.get(k) for k in FIGURES}}
            print(json.dumps({kind: rows[kind]}, default=str), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'generator':12} {'EM':>6} {'F1':>6} {'abst P':>7} {'abst R':>7} {'abst rate':>9} {'q/s':>7} {'seconds':>8}")
    for kind, r in rows.items():
        print(f"{kind:12} {r['exact_match']:6.3f} {r['f1']:6.3f} {r['abstention_precision'] or 0:7.3f} "
              f"{r['abstention_recall'] or 0:7.3f} {r['abstention_rate'] or 0:9.3f} {r['questions_per_s']:7.3f} "
              f"{r['answer_seconds']:8.1f}")
    return rows


if __name__ == "__main__":
    main()
