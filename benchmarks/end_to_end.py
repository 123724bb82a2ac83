"""End to end: the ingest job's documents/s and the answer job's questions/s vs a plain pipeline.

The real jobs (``sparkrag.jobs.ingest`` and ``sparkrag.jobs.answer``, extractive answerer,
default retrieval config) run on the shipped sample (``resources/sample``: 250 documents,
54 questions; the questions repeated ``--repeat-questions`` times under new ids so that the
answer run is long enough to time) in one local[2] Spark session. Each round gets fresh
tables and a fresh Chroma directory, so every ingest is a first ingest of the corpus.
Round 1 is cold (Python workers start and load MiniLM); the best of the later rounds is
the warm figure.

Baseline, measured in the same run: the same steps in ONE plain Python process (one torch
thread, models loaded before timing), nothing written but Chroma:

* ingest: ``split_texts`` -> ``make_encode_fn`` (passage) -> ``collection.add`` in max-size batches;
* answer: ``make_encode_fn`` (query, 64 questions a call) -> ``collection.query`` (fetch_k,
  64 a call) -> the extractive answerer on the top_k contexts (16 questions a call,
  questions shuffled as Spark's round-robin repartition does).

Spark runs two workers on 2 cores, so the script also prints a 2-core bound computed from
the same measurement: the model steps (encode, answer) halved, the rest (chunking is cheap,
Chroma has one writer) as measured.

    .venv/bin/python benchmarks/end_to_end.py [--repeat-questions 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "sample"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

DOCUMENTS_DDL = "doc_id string, title string, text string, source string, lang string"
QUESTIONS_DDL = "question_id string, question string, doc_id string"


# -- data (also used by scale.py and retrieval.py) -----------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def repeat_questions(questions: list[dict[str, Any]], times: int) -> list[dict[str, Any]]:
    """``times`` copies of the questions; copy k > 0 gets ids ``<id>~k`` (same text)."""
    return [{**q, "question_id": q["question_id"] if k == 0 else f"{q['question_id']}~{k}"}
            for k in range(times) for q in questions]


def job_overrides(root: str, collection: str = "bench") -> list[str]:
    """``--set`` arguments that put every table and the Chroma directory under ``root``."""
    sets = [f"tables.root={root}/tables", f"chroma.path={root}/chroma", f"chroma.collection={collection}"]
    return [item for s in sets for item in ("--set", s)] + ["--log-level", "WARNING"]


def write_inputs(spark: Any, argv: list[str], documents: list[dict[str, Any]],
                 questions: list[dict[str, Any]]) -> None:
    """The documents and questions Delta tables named by the config that ``argv`` builds."""
    from sparkrag.config import RagConfig, load_config
    from sparkrag.delta import open_tables

    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(RagConfig, None, overrides)
    tables = open_tables(spark, cfg.tables)
    for table, rows, ddl in ((cfg.names.documents, documents, DOCUMENTS_DDL),
                             (cfg.names.questions, questions, QUESTIONS_DDL)):
        cols = [c.split()[0] for c in ddl.split(", ")]
        tables.write(spark.createDataFrame([tuple(r.get(c) for c in cols) for r in rows], ddl), table,
                     mode="overwrite")


def timed_job(run, argv: list[str], spark: Any) -> tuple[dict[str, Any], float]:
    """(the job's run record, wall seconds), the job's JSON summary kept off stdout."""
    import contextlib
    import io

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        record = run(argv, spark=spark)
    seconds = time.perf_counter() - start
    if record.get("status") != "succeeded":
        raise RuntimeError(f"job did not succeed: {record.get('status')} {record.get('error')}")
    return record, seconds


# -- the plain pipeline ------------------------------------------------------------------------
def _plain_pipeline(root: str, documents: list[dict[str, Any]], questions: list[dict[str, Any]], out: Any) -> None:
    """One process: chunk, encode, add; encode questions, query, answer. Puts step seconds on ``out``."""
    import numpy as np

    from sparkrag.chunk import chunk_budget, chunk_id, content_hash, split_texts
    from sparkrag.config import RagConfig, load_config
    from sparkrag.embed import encoder_info, make_encode_fn
    from sparkrag.generation.extractive import make_extractive_fn
    from sparkrag.models import load_tokenizer, resolve_model_path
    from sparkrag.index.vectorstore import open_client, open_collection, to_chroma_metadata

    cfg = load_config(RagConfig, None, [f"chroma.path={root}/plain-chroma", "chroma.collection=plain"])
    model_id, dim = encoder_info(cfg.encoder)
    tokenizer = load_tokenizer(resolve_model_path(cfg.encoder.model))
    budget = chunk_budget(tokenizer, encoder=cfg.encoder, chunking=cfg.chunking)
    encode_passage = make_encode_fn(cfg.encoder, role="passage")()
    encode_query = make_encode_fn(cfg.encoder, role="query")()
    answerer = make_extractive_fn(cfg.encoder, cfg.generator)()
    encode_passage(["warm up"]), encode_query(["warm up"]), answerer([("warm up?", ["Warm up."])])
    client = open_client(cfg.chroma)
    collection = open_collection(client, cfg.chroma, embedding_model=model_id, dim=dim, create=True)
    steps: dict[str, float] = {}

    def step(name: str, fn):
        start = time.perf_counter()
        result = fn()
        steps[name] = time.perf_counter() - start
        return result

    per_doc = step("chunk", lambda: split_texts([d["text"] for d in documents], tokenizer, budget))
    chunks = [(d, c) for d, cs in zip(documents, per_doc) for c in cs]
    vectors = step("encode_passages", lambda: encode_passage([c.text for _, c in chunks]))

    def add() -> None:
        ids = [chunk_id(d["doc_id"], c.index, content_hash(c.text)) for d, c in chunks]
        metas = [to_chroma_metadata(d["doc_id"], c.index, d["title"], None) for d, c in chunks]
        size = client.get_max_batch_size()
        for lo in range(0, len(ids), size):
            collection.add(ids=ids[lo:lo + size], embeddings=vectors[lo:lo + size],
                           documents=[c.text for _, c in chunks[lo:lo + size]], metadatas=metas[lo:lo + size])

    step("chroma_add", add)
    order = list(range(len(questions)))
    random.Random(0).shuffle(order)  # as Spark's repartition spreads the rows
    texts = [questions[i]["question"] for i in order]
    q_vecs = step("encode_questions", lambda: np.concatenate(
        [encode_query(texts[lo:lo + cfg.retrieval.query_batch_size])
         for lo in range(0, len(texts), cfg.retrieval.query_batch_size)]))

    def query() -> list[list[str]]:
        found: list[list[str]] = []
        for lo in range(0, len(texts), cfg.retrieval.query_batch_size):
            res = collection.query(query_embeddings=q_vecs[lo:lo + cfg.retrieval.query_batch_size],
                                   n_results=cfg.retrieval.fetch_k, include=["documents", "metadatas", "distances"])
            found.extend(docs[:cfg.retrieval.top_k] for docs in res["documents"])
        return found

    contexts = step("chroma_query", query)
    step("answer", lambda: [answerer(list(zip(texts[lo:lo + cfg.generator.batch_size],
                                                contexts[lo:lo + cfg.generator.batch_size])))
                            for lo in range(0, len(texts), cfg.generator.batch_size)])
    out.put({"steps": steps, "chunks": len(chunks)})


def plain_pipeline(root: str, documents: list[dict[str, Any]], questions: list[dict[str, Any]]) -> dict[str, Any]:
    """Run :func:`_plain_pipeline` in a spawned process (its own torch, its own memory)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_plain_pipeline, args=(root, documents, questions, out))
    proc.start()
    result = out.get()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"plain pipeline exited with {proc.exitcode}")
    return result


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="folder with documents.jsonl, questions.jsonl")
    parser.add_argument("--repeat-questions", type=int, default=10, help="copies of the question set to answer")
    parser.add_argument("--rounds", type=int, default=3, help="job rounds: the first is cold, best of the rest warm")
    args = parser.parse_args(argv)

    from sparkrag.config import SparkConfig
    from sparkrag.jobs.answer import run as answer_run
    from sparkrag.jobs.ingest import run as ingest_run
    from sparkrag.spark import get_spark

    documents = read_jsonl(args.sample / "documents.jsonl")
    questions = repeat_questions(read_jsonl(args.sample / "questions.jsonl"), args.repeat_questions)
    root = tempfile.mkdtemp(prefix="bench-e2e-")
    rounds: list[dict[str, float]] = []
    spark = None
    try:
        plain = plain_pipeline(root, documents, questions)  # first: its figures survive a stopped run
        print(f"plain pipeline (load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{k} {v:.1f}s" for k, v in plain["steps"].items()), flush=True)
        spark = get_spark(SparkConfig(master="local[2]", app_name="bench-end-to-end"))
        for r in range(args.rounds):
            common = job_overrides(f"{root}/r{r}")
            write_inputs(spark, common, documents, questions)
            ingest, ingest_s = timed_job(ingest_run, common, spark)
            answer, answer_s = timed_job(answer_run, common + ["--generator", "extractive"], spark)
            rounds.append({"ingest_s": ingest_s, "answer_s": answer_s, "chunks": ingest["counts"]["chunks_embedded"],
                           "answers": answer["counts"]["answers"], "errors": answer["counts"]["errors"],
                           "embed_s": ingest["stage_seconds"]["chunk_embed_write"],
                           "load_s": ingest["stage_seconds"]["chroma_load"],
                           "answer_stage_s": answer["stage_seconds"]["retrieve_generate_write"]})
            print(f"round {r + 1} ({'cold' if r == 0 else 'warm'}, load {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in rounds[-1].items()),
                  flush=True)
    finally:
        if spark is not None:
            spark.stop()
        shutil.rmtree(root, ignore_errors=True)
    return _report(rounds, plain, len(documents), len(questions))


def _report(rounds: list[dict[str, float]], plain: dict[str, Any], n_docs: int, n_questions: int) -> dict[str, float]:
    s = plain["steps"]
    warm = rounds[1:] or rounds
    ingest_s = min(r["ingest_s"] for r in warm)
    answer_s = min(r["answer_s"] for r in warm)
    chunks = rounds[0]["chunks"]
    plain_ingest = s["chunk"] + s["encode_passages"] + s["chroma_add"]
    plain_answer = s["encode_questions"] + s["chroma_query"] + s["answer"]
    bound_ingest = s["chunk"] + s["encode_passages"] / 2 + s["chroma_add"]
    bound_answer = s["encode_questions"] / 2 + s["chroma_query"] + s["answer"] / 2
    rate = {
        "ingest_docs_per_s": n_docs / ingest_s, "ingest_chunks_per_s": chunks / ingest_s,
        "ingest_docs_per_s_cold": n_docs / rounds[0]["ingest_s"],
        "plain_ingest_docs_per_s": n_docs / plain_ingest, "bound_ingest_docs_per_s": n_docs / bound_ingest,
        "answer_questions_per_s": n_questions / answer_s,
        "answer_questions_per_s_cold": n_questions / rounds[0]["answer_s"],
        "plain_answer_questions_per_s": n_questions / plain_answer,
        "bound_answer_questions_per_s": n_questions / bound_answer,
    }
    print(f"\ncorpus: {n_docs} documents -> {chunks} chunks (plain pipeline: {plain['chunks']}); "
          f"{n_questions} questions; warm = best of {len(warm)} round(s)")
    print("\n== ingest job (documents/s) ==")
    print(f"ingest job, warm                       {rate['ingest_docs_per_s']:8.1f} docs/s  "
          f"({rate['ingest_chunks_per_s']:.1f} chunks/s; cold {rate['ingest_docs_per_s_cold']:.1f} docs/s)")
    print(f"plain pipeline, one process            {rate['plain_ingest_docs_per_s']:8.1f} docs/s  "
          f"job/plain = {rate['ingest_docs_per_s'] / rate['plain_ingest_docs_per_s']:.2f}x")
    print(f"2-core bound (encode halved)           {rate['bound_ingest_docs_per_s']:8.1f} docs/s  "
          f"job/bound = {rate['ingest_docs_per_s'] / rate['bound_ingest_docs_per_s']:.2f}x")
    print("\n== answer job, extractive (questions/s) ==")
    print(f"answer job, warm                       {rate['answer_questions_per_s']:8.1f} q/s  "
          f"(cold {rate['answer_questions_per_s_cold']:.1f} q/s)")
    print(f"plain pipeline, one process            {rate['plain_answer_questions_per_s']:8.1f} q/s  "
          f"job/plain = {rate['answer_questions_per_s'] / rate['plain_answer_questions_per_s']:.2f}x")
    print(f"2-core bound (models halved)           {rate['bound_answer_questions_per_s']:8.1f} q/s  "
          f"job/bound = {rate['answer_questions_per_s'] / rate['bound_answer_questions_per_s']:.2f}x")
    return rate


if __name__ == "__main__":
    main()
