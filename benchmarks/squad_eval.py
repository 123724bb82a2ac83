"""End-to-end quality on SQuAD 2.0 paragraphs: load -> ingest job -> answer job -> evaluation job.

Loads ``documents.jsonl`` and ``questions.jsonl`` of a SQuAD folder (see
/work/shared/data/squad2-train10/README.md) into Delta tables under ``--workdir``, runs the
three jobs through their command lines (``sparkrag-ingest``, ``sparkrag-answer``,
``sparkrag-evaluate``) in one Spark session, and prints recall@1/5/10, MRR, EM/F1,
abstention precision/recall and the ANN audit's recall@10.

    .venv/bin/python benchmarks/squad_eval.py --data /work/shared/data/squad2-train10
    .venv/bin/python benchmarks/squad_eval.py --data ... --limit 300          # a quick look
    .venv/bin/python benchmarks/squad_eval.py --data ... --sample 600 --seed 0  # random questions,
                                                    # unanswerable ones included (their ids sort last)
    .venv/bin/python benchmarks/squad_eval.py --data ... --generator chatqa --model /models/chatqa

Reference (FACTS.md, brute-force MiniLM on whole paragraphs): recall@1/5/10 ~ 0.61/0.86/0.92.
The answer job keeps ``--top-k`` contexts per question (default 10, so recall@10 is measured).

``--split tune|check`` keeps the questions of half the articles (issue #16): the articles'
titles sorted, the 1st, 3rd, 5th... are the tuning half, the others the check half. The
corpus stays every paragraph of every article. Retrieval was tuned on ``tune`` only:

    .venv/bin/python benchmarks/squad_eval.py --split check --limit 20 --ann-sample 0 \
        --compare-modes dense,lexical,hybrid,hybrid-rrf,hybrid-weighted,hybrid-docmax,hybrid-notitle
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

DOCUMENTS_DDL = "doc_id string, title string, text string"
QUESTIONS_DDL = ("question_id string, question string, doc_id string, title string, answers array<string>, "
                 "is_impossible boolean")
SUMMARY = ("recall@1", "recall@5", "recall@10", "mrr", "exact_match", "f1", "abstention_precision",
           "abstention_recall", "ann_recall@10", "latency_ms_p50", "latency_ms_p95")


def article_split(titles, split: str) -> set[str]:
    """The articles of ``split`` (tune: 1st, 3rd... of the sorted distinct titles; check: the others; all)."""
    ordered = sorted(set(titles))
    return set(ordered) if split == "all" else set(ordered[0 if split == "tune" else 1::2])


def load_jsonl_tables(spark, data: Path, overrides: list[str], *, sample: int | None = None,
                      seed: int = 0, split: str = "all", questions_only: bool = False) -> dict[str, int]:
    """documents.jsonl and questions.jsonl -> the documents and questions Delta tables (overwritten).

    ``sample``: keep that many questions drawn at random (``seed``); None keeps all.
    ``split``: keep the questions of these articles (:func:`article_split`).
    ``questions_only``: leave the documents table as it is.
    """
    import pandas as pd

    from sparkrag.config import RagConfig, load_config
    from sparkrag.delta import open_tables

    cfg = load_config(RagConfig, None, overrides)
    tables = open_tables(spark, cfg.tables)
    counts = {}
    for name, table, ddl in (("documents", cfg.names.documents, DOCUMENTS_DDL),
                             ("questions", cfg.names.questions, QUESTIONS_DDL)):
        if questions_only and name == "documents":
            continue
        pdf = pd.read_json(data / f"{name}.jsonl", lines=True, dtype=False)
        if name == "questions" and split != "all":
            pdf = pdf[pdf["title"].isin(article_split(pdf["title"], split))]
        if name == "questions" and sample is not None and sample < len(pdf):
            pdf = pdf.sample(n=sample, random_state=seed)
        columns = [c.split()[0] for c in ddl.split(", ")]
        missing = sorted(set(columns) - set(pdf.columns))
        if missing:
            raise SystemExit(f"{data / f'{name}.jsonl'}: missing field(s) {missing}")
        rows = [tuple(r) for r in pdf[columns].itertuples(index=False)]
        tables.write(spark.createDataFrame(rows, ddl), table, mode="overwrite")
        counts[name] = len(rows)
    return counts


def _timed(label: str, fn, timings: dict[str, float]):
    start = time.perf_counter()
    result = fn()
    timings[label] = round(time.perf_counter() - start, 1)
    print(f"== {label}: {timings[label]} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/squad2-train10"))
    parser.add_argument("--workdir", type=Path, help="tables, Chroma and report (default: a fresh temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir")
    parser.add_argument("--reuse", action="store_true",
                        help="--workdir was ingested before: reload the questions only, ingest incrementally "
                             "(the lexical index is rebuilt only if its settings changed)")
    parser.add_argument("--limit", type=int, help="answer only the first N questions (by question_id)")
    parser.add_argument("--sample", type=int, help="load only N questions drawn at random (--seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=["all", "tune", "check"], default="all",
                        help="questions of half the articles only (issue #16's tuning/check halves)")
    parser.add_argument("--top-k", type=int, default=10, help="contexts kept per question (retrieval.top_k)")
    parser.add_argument("--generator", choices=["extractive", "chatqa"], default="extractive")
    parser.add_argument("--model", help="causal LM for --generator chatqa (hub id or local folder)")
    parser.add_argument("--retrieval-mode", choices=["dense", "lexical", "hybrid"], default="dense",
                        help="retrieval of the answer run")
    parser.add_argument("--vector-search", choices=["ann", "exact"], default="ann")
    parser.add_argument("--compare-modes", default="dense,lexical,hybrid",
                        help="modes compared on every question with a gold document ('' for none)")
    parser.add_argument("--ann-sample", type=int, default=200, help="questions in the ANN audit (0: none)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override passed to every job")
    args = parser.parse_args(argv)
    if args.reuse and not args.workdir:
        parser.error("--reuse needs --workdir")

    from sparkrag.config import SparkConfig
    from sparkrag.jobs.answer import run as answer_main
    from sparkrag.jobs.evaluate import run as evaluate_main
    from sparkrag.jobs.ingest import run as ingest_main
    from sparkrag.spark import get_spark

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sparkrag-squad-"))
    overrides = [f"tables.root={workdir / 'tables'}", f"chroma.path={workdir / 'chroma'}",
                 "chroma.collection=squad", f"retrieval.top_k={args.top_k}",
                 f"retrieval.fetch_k={max(20, 2 * args.top_k)}", *args.overrides]
    common = [item for o in overrides for item in ("--set", o)]
    spark = get_spark(SparkConfig(app_name="bench-squad-eval"))
    timings: dict[str, float] = {}
    try:
        counts = _timed("load", lambda: load_jsonl_tables(spark, args.data, overrides, sample=args.sample,
                                                              seed=args.seed, split=args.split,
                                                              questions_only=args.reuse), timings)
        print(f"loaded {counts} into {workdir / 'tables'}", flush=True)
        _timed("ingest", lambda: ingest_main([*common] if args.reuse else [*common, "--full-refresh"], spark=spark),
               timings)
        answer_argv = [*common, "--generator", args.generator, "--retrieval-mode", args.retrieval_mode,
                       "--vector-search", args.vector_search]
        if args.model:
            answer_argv += ["--model", args.model]
        if args.limit:
            answer_argv += ["--limit", str(args.limit)]
        answer = _timed("answer", lambda: answer_main(answer_argv, spark=spark), timings)
        result = _timed("evaluate", lambda: evaluate_main(
            [*common, "--run-id", answer["run_id"], "--ann-sample", str(args.ann_sample),
             "--compare-modes", args.compare_modes, "--ks", "1,5,10",
             "--report-dir", str(workdir / "report")], spark=spark), timings)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    metrics = result["metrics"]
    summary = {key: round(metrics[key], 4) for key in SUMMARY if key in metrics}
    print(json.dumps({"questions": result["counts"]["evaluated"], **summary, "seconds": timings}, indent=2))
    modes = result.get("modes") or {}
    if modes:
        print(f"\nretrieval modes over {next(iter(modes.values()))['queries']} questions (queries/s excludes encoding):")
        print(f"{'mode':18} {'recall@1':>9} {'recall@5':>9} {'recall@10':>10} {'MRR':>7} {'queries/s':>10} "
              f"{'vs dense':>9}")
        base = modes.get("dense", {}).get("queries_per_s")
        for mode, row in modes.items():
            ratio = f"{row['queries_per_s'] / base:.2f}x" if base else ""
            print(f"{mode:18} {row['recall@1']:9.3f} {row['recall@5']:9.3f} {row['recall@10']:10.3f} {row['mrr']:7.3f} "
                  f"{row['queries_per_s']:10.1f} {ratio:>9}")
    return {"metrics": metrics, "counts": result["counts"], "seconds": timings, "modes": modes}


if __name__ == "__main__":
    main()
