"""Scale-out (issue #13): driver and worker memory, index builds, an incremental rerun and partitioned answering
at 100k, 300k and 1M chunks, through the real ingest and answer code.

The encoder is not what this measures, so the chunks table is written with PRECOMPUTED
vectors: the real all-MiniLM-L6-v2 chunks of the shipped sample (one real ingest of its 250
documents, ~320 chunks) tiled to the target size, copy ``c`` of a document with id
``<doc_id>~c``, its chunks' text tagged ``copy<c>`` (a distinct BM25 term per copy) and its
vectors moved by seeded noise (sd 0.02 per dimension, re-normalised). The documents table holds
the tiled documents, whose ``doc_hash`` the chunks carry, so the ingest job finds nothing to
embed: it plans (Spark aggregates), builds every Chroma shard and every BM25 shard in Spark
tasks, sums the BM25 statistics and publishes. The answer job is real: MiniLM encodes the
questions, the extractive answerer answers (no LLM), hybrid retrieval.

Per size, with ``chroma.shards`` = size / ``--chunks-per-shard`` (at least 2), each phase in a
fresh process (its own Spark session and Python workers, so no phase inherits another's memory):

1. ``ingest``: the full build (Chroma load + BM25), wall time;
2. ``answer_replicated`` and ``answer_partitioned``: ``--questions`` questions (the sample's 54,
   repeated), ``retrieval.shard_access`` replicated, then partitioned;
3. ``incremental``: 1% of documents changed (new text, new vectors) and 0.5% deleted, written to
   the documents and chunks tables as an embedding ingest would, then the ingest job again;
4. ``raw_add``: one writer ``collection.add``-ing ``--raw-vectors`` of the same vectors in the
   driver process (the baseline for Chroma vectors/s; last, so that it does not raise the
   driver's RSS in the phases before).

Memory: every ``--sample-s`` the RSS of each process of the child's tree (psutil): the driver
(Python), the JVM, and each Python worker; peaks per phase. A worker's RSS counts pages it shares
with the daemon it was forked from, so it is an upper bound.

    .venv/bin/python benchmarks/scale_out.py --sizes 100000 300000 1000000 [--questions 540]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

SAMPLE = ROOT / "resources" / "sample"


# -- memory: per-process peaks of a process tree --------------------------------------------------
class TreeRss(threading.Thread):
    """Peak RSS per process of ``root``'s tree, by phase: driver (root), jvm, each Python worker."""

    def __init__(self, root: int, every: float) -> None:
        super().__init__(daemon=True)
        self.root, self.every, self.phase = root, every, "setup"
        self.peaks: dict[str, dict[str, Any]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._halt.is_set():
            try:
                procs = [psutil.Process(self.root), *psutil.Process(self.root).children(recursive=True)]
            except psutil.Error:
                procs = []
            peak = self.peaks.setdefault(self.phase, {"driver": 0, "jvm": 0, "workers": {}})
            for p in procs:
                try:
                    rss, name = p.memory_info().rss, p.name()
                except psutil.Error:
                    continue
                if p.pid == self.root:
                    peak["driver"] = max(peak["driver"], rss)
                elif name.startswith("java"):
                    peak["jvm"] = max(peak["jvm"], rss)
                else:
                    peak["workers"][p.pid] = max(peak["workers"].get(p.pid, 0), rss)
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# -- the base: one real ingest of the sample ---------------------------------------------------------
def base_chunks(workdir: Path) -> Path:
    """A root whose tables hold the sample's documents and real chunks (MiniLM vectors), made once per workdir."""
    out = workdir / "base"
    if (out / "done").exists():
        return out
    from sparkrag.delta import open_tables
    from sparkrag.pipelines.ingest import run_ingest
    from sparkrag.spark import get_spark

    shutil.rmtree(out, ignore_errors=True)
    cfg = _base_config(out)
    spark = get_spark(cfg.spark)
    docs = [json.loads(line) for line in (SAMPLE / "documents.jsonl").read_text().splitlines()]
    open_tables(spark, cfg.tables).write(spark.createDataFrame([(d["doc_id"], d["title"], d["text"]) for d in docs],
                                                               "doc_id string, title string, text string"),
                                         cfg.names.documents)
    run_ingest(spark, cfg)
    spark.stop()
    (out / "done").write_text("ok")
    return out


def _base_config(base: Path) -> Any:
    from sparkrag.config import RagConfig, load_config

    return load_config(RagConfig, None, [f"tables.root={base}/tables", f"chroma.path={base}/chroma",
                                         "lexical.enabled=false"])


# -- one size (child process) ----------------------------------------------------------------------
def _config(root: str, shards: int, extra: list[str]) -> Any:
    from sparkrag.config import RagConfig, load_config

    return load_config(RagConfig, None, [
        f"tables.root={root}/tables", f"chroma.path={root}/chroma", "chroma.collection=scale",
        f"chroma.shards={shards}", "retrieval.mode=hybrid", "generator.kind=extractive",
        "spark.conf={spark.ui.enabled: 'false', spark.driver.memory: 6g, spark.sql.shuffle.partitions: '8'}",
        *extra])


def _noisy(batches, seed_col: str = "chunk_id"):
    """mapInPandas: each chunk's vector moved by noise seeded from its id, re-normalised."""
    import zlib

    import numpy as np

    for pdf in batches:
        out = []
        for cid, vec in zip(pdf[seed_col], pdf["embedding"]):
            rng = np.random.default_rng(zlib.crc32(cid.encode("utf-8")))
            v = np.asarray(vec, dtype=np.float32) + rng.normal(0, 0.02, len(vec)).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        pdf["embedding"] = out
        yield pdf


def _tiled(spark, base: Path, copies: int, cfg: Any, *, tag: str = ""):
    """(documents, chunks) DataFrames: ``copies`` copies of the base, doc_hash as the ingest computes it."""
    from pyspark.sql import functions as F

    from sparkrag.pipelines.ingest import prepare_documents
    from sparkrag.schemas import CHUNKS_SCHEMA

    from sparkrag.delta import open_tables

    base_cfg = _base_config(base)
    base_tables = open_tables(spark, base_cfg.tables)
    docs = base_tables.read(base_cfg.names.documents).select("doc_id", "title", "text")
    chunks = base_tables.read(base_cfg.names.chunks).drop("created_at")
    copy = spark.range(copies).select(F.col("id").cast("int").alias("c"))
    suffix = F.concat(F.lit("~"), F.col("c").cast("string"))
    docs = docs.crossJoin(copy).select(F.concat("doc_id", suffix).alias("doc_id"), "title",
                                       F.concat("text", F.lit(f" copy{tag}"), F.col("c").cast("string")).alias("text"))
    valid, _ = prepare_documents(docs, cfg, table="documents")
    hashes = valid.select("doc_id", "doc_hash")
    tiled = (chunks.drop("doc_hash").crossJoin(copy)
             .withColumn("doc_id", F.concat("doc_id", suffix))
             .withColumn("chunk_id", F.sha2(F.concat_ws("#", F.lit(tag), F.col("doc_id"), F.col("chunk_index")), 256))
             .withColumn("text", F.concat("text", F.lit(f" copy{tag}"), F.col("c").cast("string")))
             .join(hashes, "doc_id"))
    tiled = tiled.mapInPandas(_noisy, tiled.schema).withColumn("created_at", F.current_timestamp())
    types = dict(tiled.dtypes)
    return docs, tiled.select(*[F.col(f.name) if types[f.name] == f.dataType.simpleString()
                                else F.col(f.name).cast(f.dataType) for f in CHUNKS_SCHEMA.fields])


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _raw_add(root: str, base_vectors: Any, base_texts: list[str], n: int) -> float:
    """Vectors/s of one writer adding ``n`` vectors (the base's, repeated with noise) in this process."""
    import numpy as np

    from sparkrag.config import ChromaConfig
    from sparkrag.index.vectorstore import _max_batch, open_collection, persistent_client, to_chroma_metadata

    rng = np.random.default_rng(0)
    reps = math.ceil(n / len(base_texts))
    vectors = np.concatenate([base_vectors] * reps)[:n]
    vectors = (vectors + rng.normal(0, 0.02, vectors.shape)).astype(np.float32)
    ids = [f"raw-{i}" for i in range(n)]
    docs = (base_texts * reps)[:n]
    metas = [to_chroma_metadata(f"d{i // 2}", i % 2, "t", None) for i in range(n)]
    cfg = ChromaConfig(path=f"{root}/raw", collection="raw")
    collection = open_collection(persistent_client(cfg.path), cfg, embedding_model="raw", dim=vectors.shape[1],
                                 create=True)
    step = _max_batch(collection, None)
    start = time.perf_counter()
    for lo in range(0, n, step):
        collection.add(ids=ids[lo:lo + step], embeddings=vectors[lo:lo + step], documents=docs[lo:lo + step],
                       metadatas=metas[lo:lo + step])
    seconds = time.perf_counter() - start
    shutil.rmtree(cfg.path, ignore_errors=True)
    return n / seconds


def run_phase(size: int, phase: str, args: argparse.Namespace, root: str) -> dict[str, Any]:
    """One phase of one size in this (fresh) process: its own Spark session, its own Python workers."""
    import numpy as np
    from pyspark.sql import functions as F

    from sparkrag.delta import open_tables
    from sparkrag.pipelines.answer import run_answer
    from sparkrag.pipelines.ingest import run_ingest
    from sparkrag.spark import get_spark

    base = Path(args.workdir) / "base"
    shards = max(2, math.ceil(size / args.chunks_per_shard))
    cfg = _config(root, shards, [])
    spark = get_spark(cfg.spark)
    base_cfg = _base_config(base)
    seed = open_tables(spark, base_cfg.tables).read(base_cfg.names.chunks).select("embedding", "text").collect()
    copies = max(1, round(size / len(seed)))
    tables = open_tables(spark, cfg.tables)
    out: dict[str, Any] = {}
    if phase == "ingest":
        docs, chunks = _tiled(spark, base, copies, cfg)
        tables.write(docs, cfg.names.documents)
        tables.write(chunks, cfg.names.chunks)
        questions = [json.loads(line) for line in (SAMPLE / "questions.jsonl").read_text().splitlines()]
        rows = [(f"{q['question_id']}~{k}", q["question"]) for k in range(math.ceil(args.questions / len(questions)))
                for q in questions][:args.questions]
        tables.write(spark.createDataFrame(rows, "question_id string, question string"), cfg.names.questions)
        out.update(chunks=tables.read(cfg.names.chunks).count(), documents=tables.read(cfg.names.documents).count(),
                   shards=shards, questions=len(rows))
        print("PHASE ingest", flush=True)
        record, out["ingest_s"] = _timed(run_ingest, spark, cfg)
        out["ingest_stages"] = record["stage_seconds"]
        out["chroma_vectors_per_s"] = out["chunks"] / max(record["stage_seconds"]["chroma_load"], 1e-9)
    elif phase.startswith("answer_"):
        access = phase.removeprefix("answer_")
        print(f"PHASE {phase}", flush=True)
        run_cfg = _config(root, shards, [f"retrieval.shard_access={access}", f"answer.run_id=scale-{access}"])
        record, seconds = _timed(run_answer, spark, run_cfg)
        stage = record["stage_seconds"]["retrieve_generate_write"]
        out[phase] = {"wall_s": seconds, "stage_s": stage, "questions_per_s": record["counts"]["answers"] / stage,
                      "errors": record["counts"].get("errors", 0), "access": record["outputs"]["shard_access"]}
    elif phase == "incremental":
        # Picked by a hash unrelated to the shard (crc32(doc_id) % shards): changes land in every shard.
        pick = F.conv(F.substring(F.sha2(F.concat(F.lit("change:"), "doc_id"), 256), 1, 8), 16, 10).cast("long") % 200
        doc_ids = tables.read(cfg.names.documents).select("doc_id")
        changed = doc_ids.where(pick < 2).withColumn("_change", F.lit("changed"))  # 1%
        deleted = doc_ids.where(pick == 2).withColumn("_change", F.lit("deleted"))  # 0.5%
        touched = changed.unionByName(deleted).cache()
        counts = {r["_change"]: r["count"] for r in touched.groupBy("_change").count().collect()}
        new_docs, new_chunks = _tiled(spark, base, copies, cfg, tag="v2")  # new text, hash and vectors
        tables.delete_keys(touched.select("doc_id"), cfg.names.chunks, keys=["doc_id"])
        tables.write(new_chunks.join(changed.select("doc_id"), "doc_id"), cfg.names.chunks, mode="append")
        tables.delete_keys(touched.select("doc_id"), cfg.names.documents, keys=["doc_id"])
        tables.write(new_docs.join(changed.select("doc_id"), "doc_id"), cfg.names.documents, mode="append")
        print("PHASE incremental", flush=True)
        record, out["incremental_s"] = _timed(run_ingest, spark, cfg)
        out["incremental"] = {"documents_changed": counts.get("changed", 0),
                              "documents_deleted": counts.get("deleted", 0), "stages": record["stage_seconds"],
                              "chroma_shards_rewritten": record["counts"].get("chroma_shards_rewritten"),
                              "chroma_shards_delta": record["counts"].get("chroma_shards_delta"),
                              "chroma_rows_shipped": record["counts"].get("chroma_rows_shipped"),
                              "chroma_loaded": record["counts"].get("chroma_loaded"),
                              "lexical_tokenized": record["counts"].get("lexical_tokenized")}
    elif phase == "raw_add":
        print("PHASE raw_add", flush=True)
        vectors, texts = np.array([r["embedding"] for r in seed], dtype=np.float32), [r["text"] for r in seed]
        n = min(args.raw_vectors, tables.read(cfg.names.chunks).count())
        out["raw_add_vectors_per_s"] = _raw_add(root, vectors, texts, n)
        out["index_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for p in (f"{root}/chroma", f"{root}/chroma-lexical")
                                 for d, _, fs in os.walk(p) for f in fs)
    spark.stop()
    return out


CHILD_PHASES = ("ingest", "answer_replicated", "answer_partitioned", "incremental", "raw_add")


def _child(size: int, phase: str, args: argparse.Namespace, root: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one phase in a child process while sampling its process tree: (result, peaks by phase)."""
    cmd = [sys.executable, __file__, "--child", str(size), "--phase", phase, "--workdir", args.workdir,
           "--questions", str(args.questions), "--chunks-per-shard", str(args.chunks_per_shard), "--raw-vectors",
           str(args.raw_vectors), "--root", root]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    memory = TreeRss(proc.pid, args.sample_s)
    memory.start()
    result = None
    for line in proc.stdout:
        if line.startswith("PHASE "):
            memory.phase = line.split()[1]
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    proc.wait()
    memory.stop()
    if proc.returncode or result is None:
        raise RuntimeError(f"size {size}, phase {phase}: exited with {proc.returncode}")
    return result, memory.peaks


def measure(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase of one size, each in a fresh process (its workers hold only what that phase loaded)."""
    root = tempfile.mkdtemp(prefix=f"scale-out-{size}-", dir=args.workdir)
    result: dict[str, Any] = {"size": size, "memory_mib": {}}
    try:
        for phase in [p for p in CHILD_PHASES if p in args.phases]:
            out, peaks = _child(size, phase, args, root)
            result.update(out)
            for name, p in peaks.items():
                if name == phase:
                    result["memory_mib"][name] = {"driver": p["driver"] / 2**20, "jvm": p["jvm"] / 2**20,
                                                  "worker_max": max(p["workers"].values(), default=0) / 2**20,
                                                  "workers": len(p["workers"])}
            print(f"  {size}: {phase} done", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


def report(results: list[dict[str, Any]]) -> None:
    """One line per size (a phase not run prints nan), then the largest size against the smallest."""
    nan = float("nan")
    base = results[0]
    print("\nsize     chunks   shards  ingest_s  incr_s (ratio)  chroma v/s (raw v/s)  q/s repl  q/s part (ratio)"
          "  driver MiB ingest/answer  worker MiB repl/part")
    for r in results:
        m = {k: v for k, v in r["memory_mib"].items()}
        mem = lambda phase, key: m.get(phase, {}).get(key, nan)  # noqa: E731
        repl, part = (r.get(k, {}).get("questions_per_s", nan) for k in ("answer_replicated", "answer_partitioned"))
        incr = r.get("incremental_s", nan)
        print(f"{r['size']:>8} {r['chunks']:>8} {r['shards']:>6} {r['ingest_s']:>9.1f} {incr:>7.1f} "
              f"({incr / r['ingest_s']:.2f})  {r['chroma_vectors_per_s']:>8.0f} ({r.get('raw_add_vectors_per_s', nan):.0f})"
              f"  {repl:>8.2f}  {part:>8.2f} ({part / repl:.2f})  "
              f"{mem('ingest', 'driver'):>6.0f} / {mem('answer_replicated', 'driver'):>6.0f}"
              f"  {mem('answer_replicated', 'worker_max'):>6.0f} / {mem('answer_partitioned', 'worker_max'):>6.0f}")
    last = results[-1]
    peak = lambda r: max(v["driver"] for k, v in r["memory_mib"].items() if k != "raw_add")  # noqa: E731
    print(f"\n{last['size']} vs {base['size']} chunks: driver peak RSS {peak(last):.0f} vs {peak(base):.0f} MiB "
          f"({peak(last) / peak(base):.2f}x)")
    if "index_bytes" in last:
        print(f"index on disk {last['index_bytes'] / 2**20:.0f} MiB in {last['shards']} shards "
              f"({last['index_bytes'] / last['shards'] / 2**20:.0f} MiB per shard)")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--questions", type=int, default=540)
    parser.add_argument("--chunks-per-shard", type=int, default=100_000)
    parser.add_argument("--raw-vectors", type=int, default=50_000, help="vectors in the raw collection.add baseline")
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--phases", nargs="+", choices=CHILD_PHASES, default=list(CHILD_PHASES),
                        help="phases to run per size (ingest always runs: every size starts from an empty root)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "sparkrag-scale-out"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.phases = sorted({"ingest", *args.phases}, key=CHILD_PHASES.index)
    os.makedirs(args.workdir, exist_ok=True)
    if args.child:
        print("RESULT " + json.dumps(run_phase(args.child, args.phase, args, args.root)), flush=True)
        return []
    base_chunks(Path(args.workdir))
    print("vectors: the sample's real MiniLM chunk vectors, tiled with seeded noise (no encoder in the ingest); "
          "questions: MiniLM; answers: extractive", flush=True)
    results = []
    for size in args.sizes:
        result = measure(size, args)
        print(json.dumps(result), flush=True)
        results.append(result)
    report(results)
    return results


if __name__ == "__main__":
    main()
