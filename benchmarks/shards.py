"""Sharded Chroma: load throughput for 1, 2, 4 shards and query latency, against one writer / one index.

1. Load: ``chroma_sync.sync_collection`` (the ingest's load step: shard assignment, one
   Spark task per shard building it in local staging, verify, copy, publish the manifest)
   from a cached chunks frame into an empty store, with ``chroma.shards`` 1, 2 and 4, vs
   the raw single-writer baseline: ``collection.add`` of the same ids/vectors/documents/
   metadata in one process, in batches of ``get_max_batch_size()``, prepared in memory
   beforehand. Goal: >= 1.5x the raw writer on 2 cores.
2. Query: batches of 64 queries (``retrieval.query_batch_size``), ``n_results`` 10, with
   what ``retrieve.search`` includes (documents, metadata, distances, embeddings), on the
   published index of each shard count (1 shard: the plain collection; more: the merged
   ``ShardedIndex``), in this process after a warm-up; recall@10 against exact search.
   Goal: latency <= 1.5x the single index at the same recall.

Vectors are synthetic: ``--vectors`` 384-dim unit vectors around 50 cluster centres, with
a ~80-character text and two metadata keys each; queries are noisy copies of stored vectors.

    .venv/bin/python benchmarks/shards.py [--vectors 8000] [--queries 640] [--shards 1 2 4] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from sparkrag.config import ChromaConfig, RagConfig, SparkConfig  # noqa: E402

MODEL, DIM = "bench/synthetic-384", 384
INCLUDE = ["documents", "metadatas", "distances", "embeddings"]  # what retrieve.search asks for


def synthetic(n: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, DIM))
    x = centres[rng.integers(0, 50, n)] + 0.6 * rng.normal(size=(n, DIM))
    vectors = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    docs = [f"doc-{i // 4:05d}" for i in range(n)]
    return {"ids": [f"{d}:{i % 4}" for i, d in enumerate(docs)], "doc_ids": docs, "vectors": vectors,
            "texts": [f"Chunk {i % 4} of {d}: a short synthetic passage about topic {i % 50} for the bench."
                      for i, d in enumerate(docs)],
            "meta": [{"source": "wiki" if i % 2 else "blog", "lang": "en"} for i in range(n)]}


def raw_add(path: str, data: dict[str, Any]) -> float:
    """Seconds for one writer to ``add`` everything (the baseline), collection created first."""
    from sparkrag.index.vectorstore import open_collection, persistent_client, to_chroma_metadata

    cfg = ChromaConfig(path=path, collection="raw")
    client = persistent_client(path)
    collection = open_collection(client, cfg, embedding_model=MODEL, dim=DIM, create=True)
    metas = [to_chroma_metadata(d, i % 4, None, {**m, "doc_hash": "h"})
             for i, (d, m) in enumerate(zip(data["doc_ids"], data["meta"]))]
    size = client.get_max_batch_size()
    start = time.perf_counter()
    for lo in range(0, len(data["ids"]), size):
        collection.add(ids=data["ids"][lo:lo + size], embeddings=data["vectors"][lo:lo + size],
                       documents=data["texts"][lo:lo + size], metadatas=metas[lo:lo + size])
    seconds = time.perf_counter() - start
    assert collection.count() == len(data["ids"])
    client.close()
    return seconds


def chunks_frame(spark: Any, data: dict[str, Any]) -> Any:
    import pandas as pd

    pdf = pd.DataFrame({"chunk_id": data["ids"], "doc_id": data["doc_ids"],
                        "chunk_index": [i % 4 for i in range(len(data["ids"]))], "text": data["texts"],
                        "title": [None] * len(data["ids"]), "metadata": data["meta"],
                        "doc_hash": ["h"] * len(data["ids"]), "embedding": list(data["vectors"])})
    schema = ("chunk_id string, doc_id string, chunk_index int, text string, title string, "
              "metadata map<string,string>, doc_hash string, embedding array<float>")
    df = spark.createDataFrame(pdf, schema).repartition(4).cache()
    df.count()
    return df


def sharded_load(chunks: Any, path: str, shards: int) -> tuple[float, RagConfig]:
    from sparkrag.index.sync import sync_collection

    cfg = RagConfig(chroma=ChromaConfig(path=path, collection="bench", shards=shards))
    start = time.perf_counter()
    counts = sync_collection(chunks, cfg, embedding_model=MODEL, dim=DIM)
    seconds = time.perf_counter() - start
    assert counts["loaded"] == counts["total"] and counts["shards"] == shards, counts
    return seconds, cfg


def query_figures(cfg: RagConfig, queries: np.ndarray, exact_ids: list[set[str]], batch: int) -> tuple[float, float]:
    """(ms per query, recall@10) on the published index of ``cfg``, after a warm-up batch."""
    from sparkrag.index.shards import open_index, resolve_shards

    index = open_index(cfg.chroma, resolve_shards(cfg.chroma))
    index.query(query_embeddings=queries[:batch], n_results=10, include=["distances"])  # loads the HNSW files
    got: list[list[str]] = []
    start = time.perf_counter()
    for lo in range(0, len(queries), batch):
        got += index.query(query_embeddings=queries[lo:lo + batch], n_results=10,
                           include=INCLUDE)["ids"]
    ms = (time.perf_counter() - start) * 1000 / len(queries)
    recall = float(np.mean([len(set(g) & e) / 10 for g, e in zip(got, exact_ids)]))
    return ms, recall


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=8000)
    parser.add_argument("--queries", type=int, default=640)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=2, help="rounds; each figure is the best round")
    args = parser.parse_args(argv)

    from sparkrag.spark import get_spark

    data = synthetic(args.vectors)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, args.vectors, args.queries)
    q = data["vectors"][picks] + 0.05 * rng.normal(size=(args.queries, DIM)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    sims = q @ data["vectors"].T
    exact = [{data["ids"][i] for i in np.argsort(-row)[:10]} for row in sims]
    spark = get_spark(SparkConfig(master="local[2]", app_name="bench-shards"))
    chunks = chunks_frame(spark, data)
    root = tempfile.mkdtemp(prefix="bench-shards-")
    load: dict[str, list[float]] = {"raw_add": [], **{f"shards_{s}": [] for s in args.shards}}
    query: dict[int, tuple[float, float]] = {}
    print(f"vectors={args.vectors} dim={DIM} queries={args.queries} cores={os.cpu_count()} "
          f"spark={spark.sparkContext.defaultParallelism} workers", flush=True)
    try:
        sharded_load(chunks, f"{root}/warmup", 2)  # untimed: starts the Python workers and imports chromadb there
        for r in range(args.repeat):
            load["raw_add"].append(raw_add(f"{root}/raw{r}", data))
            for s in args.shards:
                seconds, cfg = sharded_load(chunks, f"{root}/s{s}-{r}", s)
                load[f"shards_{s}"].append(seconds)
                if r == args.repeat - 1:
                    query[s] = min((query_figures(cfg, q, exact, 64) for _ in range(2)), key=lambda t: t[0])
            print(f"round {r + 1} (load {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in load.items()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _report(args.vectors, load, query)


def _report(n: int, load: dict[str, list[float]], query: dict[int, tuple[float, float]]) -> dict[str, float]:
    raw = min(load["raw_add"])
    out = {"raw_add_per_s": n / raw}
    print(f"\nload {n} vectors (best round)\n  raw single-writer add: {n / raw:,.0f} vectors/s ({raw:.1f}s)")
    for key, values in load.items():
        if key == "raw_add":
            continue
        best = min(values)
        out[f"{key}_per_s"], out[f"{key}_vs_raw"] = n / best, raw / best
        print(f"  sync, {key.replace('_', ' ')}: {n / best:,.0f} vectors/s ({best:.1f}s) = {raw / best:.2f}x raw")
    base_ms, base_recall = query.get(1, next(iter(query.values())))
    print("query, batches of 64, n_results 10")
    for s, (ms, recall) in sorted(query.items()):
        out[f"query_ms_{s}"], out[f"recall_{s}"] = ms, recall
        print(f"  {s} shard(s): {ms:.2f} ms/query, recall@10 {recall:.4f}, {ms / base_ms:.2f}x the single index")
    return out


if __name__ == "__main__":
    main()
