"""The answer job's retrieval vs raw chromadb batched queries on the same collection, same run.

The corpus (default ``resources/sample``: 250 documents; ``--data`` takes a SQuAD folder
such as ../shared/data/squad2-train10) goes through the ingest job into an embedded
Chroma collection; its questions, cycled to ``--queries``, are the queries. Then, with the
default retrieval config (fetch_k 20, top_k 5, 64 queries a call, dedupe 0.97):

* **job**: the answer job's retrieve stage (``answer_stages.make_retrieve_stage`` over a
  cached questions DataFrame, repartitioned as the job does, Spark local[2], noop sink):
  query encoding + ``collection.query`` + post filters, per Python worker;
* **lib**: ``retrieve.retrieve_contexts`` on ``make_encode_fn`` vectors in plain processes;
* **raw**: ``collection.query`` with pre-computed query embeddings (ids+distances only, and
  with the job's ``include`` = documents, metadatas, distances, embeddings), and raw
  encode + query, to separate the encoder's cost from the store's.

Plain-process figures use one torch thread each; "2 proc" runs two such processes at once
(the fair baseline for Spark's two workers on 2 cores). Models are loaded and warm before
anything is timed; every figure is the best of ``--repeat``.

    .venv/bin/python benchmarks/retrieval.py [--queries 2000] [--repeat 2] [--data DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # end_to_end's helpers, when imported elsewhere
from end_to_end import SAMPLE, job_overrides, read_jsonl, timed_job, write_inputs  # noqa: E402

_JOB_INCLUDE = ["documents", "metadatas", "distances", "embeddings"]  # what retrieve.search asks for
MODES = ("raw_query_ids", "raw_query", "raw_encode_query", "lib")


def _config(argv: list[str]) -> Any:
    from sparkrag.config import RagConfig, load_config

    return load_config(RagConfig, None, [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])


def _run_mode(mode: str, texts: list[str], q_vecs: Any, cfg: Any, collection: Any, encode: Any) -> None:
    from sparkrag.retrieval.search import retrieve_contexts

    step, fetch = cfg.retrieval.query_batch_size, cfg.retrieval.fetch_k
    for lo in range(0, len(texts), step):
        batch = texts[lo:lo + step]
        if mode == "raw_query_ids":
            collection.query(query_embeddings=q_vecs[lo:lo + step], n_results=fetch, include=["distances"])
        elif mode == "raw_query":
            collection.query(query_embeddings=q_vecs[lo:lo + step], n_results=fetch, include=_JOB_INCLUDE)
        elif mode == "raw_encode_query":
            collection.query(query_embeddings=encode(batch), n_results=fetch, include=_JOB_INCLUDE)
        else:
            rows = [{"question_id": str(lo + i), "question": t} for i, t in enumerate(batch)]
            retrieve_contexts(rows, encode(batch), cfg=cfg.retrieval, index=collection)


def _worker(argv: list[str], texts: list[str], modes: list[str], repeat: int, barrier: Any, out: Any) -> None:
    """A plain process: open the collection as the job does, warm up, then run each mode ``repeat`` times."""
    from sparkrag.embed import encoder_info, make_encode_fn
    from sparkrag.index.shards import make_index_fn, resolve_shards

    cfg = _config(argv)
    model_id, dim = encoder_info(cfg.encoder, "query")
    collection = make_index_fn(cfg.chroma, resolve_shards(cfg.chroma), embedding_model=model_id, dim=dim)()
    encode = make_encode_fn(cfg.encoder, role="query")()
    q_vecs = encode(texts)  # pre-computed query embeddings for the raw figures
    _run_mode("lib", texts[:128], q_vecs, cfg, collection, encode)  # warm: index loaded, code paths hot
    for r in range(repeat):
        for mode in modes:
            barrier.wait()
            start = time.monotonic()
            _run_mode(mode, texts, q_vecs, cfg, collection, encode)
            out.put((mode, r, start, time.monotonic()))


def plain_processes(argv: list[str], texts: list[str], modes: list[str], repeat: int,
                    processes: int) -> dict[str, float]:
    """Best seconds per mode for ``processes`` spawned processes sharing ``texts`` round-robin."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(argv, texts[i::processes], modes, repeat, barrier, out))
             for i in range(processes)]
    for p in procs:
        p.start()
    spans: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(processes * repeat * len(modes)):
        mode, r, start, end = out.get()
        spans.setdefault((mode, r), []).append((start, end))
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"query process exited with {p.exitcode}")
    best: dict[str, float] = {}
    for (mode, _), s in spans.items():
        seconds = max(e for _, e in s) - min(b for b, _ in s)
        best[mode] = min(best.get(mode, seconds), seconds)
    return best


def job_stage(spark: Any, argv: list[str], repeat: int) -> tuple[float, int]:
    """(best seconds, rows) of the answer job's retrieve stage over the questions table."""
    from pyspark.sql import functions as F

    from sparkrag.pipelines.answer_stages import make_retrieve_stage, stage1_schema
    from sparkrag.embed import encoder_info
    from sparkrag.index.shards import prepare_index_fn
    from sparkrag.delta import open_tables

    cfg = _config(argv)
    model_id, dim = encoder_info(cfg.encoder, "query")
    history = F.lit(None).cast("array<struct<role:string,content:string>>").alias("history")
    questions = open_tables(spark, cfg.tables).read(cfg.names.questions).select("question_id", "question", history)
    questions = questions.cache()
    n = questions.count()
    # As the answer job: the published shards read in place in local mode, one task per core.
    index_fn = prepare_index_fn(spark, cfg.chroma, embedding_model=model_id, dim=dim, access=cfg.answer.chroma_access)
    stage = make_retrieve_stage(cfg, index_fn)
    parallelism = max(spark.sparkContext.defaultParallelism, 1)
    retrieved = questions.repartition(parallelism).mapInPandas(stage, stage1_schema())
    check = retrieved.agg(F.count_if(F.col("error").isNotNull()).alias("errors"),
                          F.min(F.size("contexts")).alias("min_contexts")).first()  # also warms the workers
    if check["errors"] or not check["min_contexts"]:
        raise RuntimeError(f"retrieve stage: {check['errors']} errors, min contexts {check['min_contexts']}")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        retrieved.write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - start)
    questions.unpersist()
    return min(times), n


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SAMPLE, help="folder with documents.jsonl, questions.jsonl")
    parser.add_argument("--queries", type=int, default=2000, help="queries (the questions, cycled)")
    parser.add_argument("--repeat", type=int, default=2, help="best of N for each figure")
    args = parser.parse_args(argv)

    from sparkrag.config import SparkConfig
    from sparkrag.jobs.ingest import run as ingest_run
    from sparkrag.spark import get_spark

    documents = read_jsonl(args.data / "documents.jsonl")
    base = read_jsonl(args.data / "questions.jsonl")
    questions = [{**base[i % len(base)], "question_id": f"q{i:07d}"} for i in range(args.queries)]
    texts = [q["question"] for q in questions]
    root = tempfile.mkdtemp(prefix="bench-retrieval-")
    common = job_overrides(root)
    spark = get_spark(SparkConfig(master="local[2]", app_name="bench-retrieval"))
    try:
        write_inputs(spark, common, documents, questions)
        ingest, ingest_s = timed_job(ingest_run, common, spark)
        chunks = ingest["counts"]["chunks_embedded"]
        cfg = _config(common)
        print(f"corpus {args.data}: {len(documents)} documents -> {chunks} chunks (ingest {ingest_s:.0f} s); "
              f"queries={len(texts)} fetch_k={cfg.retrieval.fetch_k} top_k={cfg.retrieval.top_k} "
              f"batch={cfg.retrieval.query_batch_size} ef_search={cfg.chroma.hnsw_search_ef}", flush=True)
        job_s, n = job_stage(spark, common, args.repeat)
        print(f"job retrieve stage: {job_s:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        one = plain_processes(common, texts, list(MODES), args.repeat, 1)
        print("one process: " + ", ".join(f"{k} {v:.2f} s" for k, v in one.items())
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
        two = plain_processes(common, texts, ["raw_encode_query", "lib"], args.repeat, 2)
        print("two processes: " + ", ".join(f"{k} {v:.2f} s" for k, v in two.items())
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)
    return _report(n, job_s, one, two, args.repeat)


def _report(n: int, job_s: float, one: dict[str, float], two: dict[str, float], repeat: int) -> dict[str, float]:
    qps = {f"{k}_1proc": n / v for k, v in one.items()} | {f"{k}_2proc": n / v for k, v in two.items()}
    qps["job"] = n / job_s
    rows = [
        ("raw collection.query, precomputed, ids+distances (1 proc)", "raw_query_ids_1proc"),
        ("raw collection.query, precomputed, job's include (1 proc)", "raw_query_1proc"),
        ("raw encode + query (1 proc)", "raw_encode_query_1proc"),
        ("raw encode + query (2 proc)", "raw_encode_query_2proc"),
        ("retrieve_contexts: encode+query+filters (1 proc)", "lib_1proc"),
        ("retrieve_contexts: encode+query+filters (2 proc)", "lib_2proc"),
        ("answer job retrieve stage (Spark local[2])", "job"),
    ]
    print(f"\n== retrieval (queries/s, best of {repeat}) ==")
    for label, key in rows:
        print(f"{label:58s} {qps[key]:9.1f}")
    print(f"\njob / raw query (precomputed, job's include, 1 proc)   {qps['job'] / qps['raw_query_1proc']:.2f}x")
    print(f"job / raw encode + query (2 proc)  <- fair on 2 cores  {qps['job'] / qps['raw_encode_query_2proc']:.2f}x")
    print(f"job / retrieve_contexts (2 proc)   = Spark's overhead  {qps['job'] / qps['lib_2proc']:.2f}x")
    lib_vs_raw = qps["lib_1proc"] / qps["raw_encode_query_1proc"]
    print(f"retrieve_contexts / raw encode + query (1 proc)        {lib_vs_raw:.2f}x")
    print(f"encoding's share of raw encode + query (1 proc)        "
          f"{1 - qps['raw_encode_query_1proc'] / qps['raw_query_1proc']:.0%}")
    return qps


if __name__ == "__main__":
    main()
