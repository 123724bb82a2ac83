"""The ingest job's two heavy stages against plain baselines measured in the same run.

1. Embedding: ``embed_dataframe`` (Spark local[2], one torch thread per Python worker) vs
   the same ``make_encode_fn`` in ONE plain process (1 thread) and in TWO plain processes
   (1 thread each). Every side encodes the same texts in calls of the same size (one call
   per Spark partition's Arrow batch) after its model is loaded and warmed up. On 2 cores
   the fair baseline is two processes: Spark runs two workers. Goal: >= 0.9x of it.
2. Chroma load: ``chroma_sync.sync_collection`` (the ingest's load step: read the chunks
   Delta table, diff with the collection, add in max-size batches, verify) into an empty
   embedded collection vs raw ``collection.add`` of the same ids/vectors/documents/metadata
   in batches of ``get_max_batch_size()``, prepared in memory beforehand. Goal: >= 0.8x.
   Then server mode: ``write_partitions_to_server`` with 1 vs 2 parallel writer tasks into
   a ``chroma run`` server this script starts on 127.0.0.1 (and stops).

Texts are real chunks of the sample corpus (``resources/sample/documents.jsonl``, split by
``sparkrag.chunk`` with the default budget), repeated with a numbered suffix up to
``--chunks``. Their chunks table is tiled (new ids, vectors nudged) to ``--load-chunks``
rows for the load figures, so a load is long enough for its fixed costs (Spark jobs,
collection open, verification) to be weighed fairly without embedding more texts.

    .venv/bin/python benchmarks/ingest.py [--chunks 1200] [--load-chunks 5000] [--repeat 2] [--no-server]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from sparkrag.config import EncoderConfig, RagConfig, SparkConfig, load_config  # noqa: E402


# -- data ------------------------------------------------------------------------------
def sample_chunks(n: int, encoder: EncoderConfig) -> list[dict[str, Any]]:
    """``n`` chunk rows (CHUNKS_SCHEMA minus embedding and lineage) from the sample corpus."""
    from sparkrag.chunk import chunk_budget, chunk_id, content_hash, split_texts
    from sparkrag.config import ChunkConfig
    from sparkrag.models import load_tokenizer, resolve_model_path

    docs = [json.loads(line) for line in (ROOT / "resources/sample/documents.jsonl").open(encoding="utf-8")]
    tokenizer = load_tokenizer(resolve_model_path(encoder.model))
    budget = chunk_budget(tokenizer, encoder=encoder, chunking=ChunkConfig())
    base = [(d, c) for d, chunks in zip(docs, split_texts([d["text"] for d in docs], tokenizer, budget))
            for c in chunks]
    rows = []
    for i in range(n):
        doc, chunk = base[i % len(base)]
        copy = i // len(base)
        text = chunk.text if copy == 0 else f"{chunk.text} ({copy})"  # distinct text, a few tokens more
        doc_id = doc["doc_id"] if copy == 0 else f"{doc['doc_id']}~{copy}"
        chash = content_hash(text)
        rows.append({"chunk_id": chunk_id(doc_id, chunk.index, chash), "doc_id": doc_id, "chunk_index": chunk.index,
                     "text": text, "title": doc["title"], "metadata": {"source": doc["source"], "lang": doc["lang"]},
                     "content_hash": chash, "doc_hash": content_hash(doc_id + doc["text"]),
                     "token_count": chunk.token_count, "char_start": chunk.char_start, "char_end": chunk.char_end})
    return rows


# -- embedding -------------------------------------------------------------------------
def _encode_worker(texts: list[str], call_rows: int, barrier: Any, out: Any) -> None:
    """A plain process: load the encoder (1 torch thread), warm up, wait for the others, encode."""
    from sparkrag.embed import make_encode_fn

    encode = make_encode_fn(EncoderConfig(), role="passage")()
    encode(texts[:16])
    barrier.wait()
    start = time.monotonic()
    for lo in range(0, len(texts), call_rows):
        encode(texts[lo:lo + call_rows])
    out.put((start, time.monotonic()))


def plain_processes(texts: list[str], processes: int, call_rows: int) -> float:
    """Seconds for ``processes`` spawned processes to encode ``texts`` (split round-robin)."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_encode_worker, args=(texts[i::processes], call_rows, barrier, out))
             for i in range(processes)]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"encoder process exited with {p.exitcode}")
    return max(end for _, end in spans) - min(start for start, _ in spans)


def spark_embed(spark: Any, chunks_df: Any, encoder: EncoderConfig) -> float:
    """Seconds for ``embed_dataframe`` over every row (a noop sink consumes the vectors)."""
    from sparkrag.embed import embed_dataframe

    start = time.perf_counter()
    embed_dataframe(chunks_df, text_col="text", cfg=encoder).write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


# -- Chroma ----------------------------------------------------------------------------
def chroma_payload(chunks: Any) -> tuple[list[str], Any, list[str], list[dict[str, Any]]]:
    """ids, vectors, documents, metadatas exactly as the ingest stores them (doc_hash included)."""
    import numpy as np

    from sparkrag.index.vectorstore import to_chroma_metadata

    rows = chunks.select("chunk_id", "embedding", "text", "doc_id", "chunk_index", "title", "metadata",
                         "doc_hash").collect()
    metas = [to_chroma_metadata(r.doc_id, r.chunk_index, r.title, {**(r.metadata or {}), "doc_hash": r.doc_hash})
             for r in rows]
    return ([r.chunk_id for r in rows], np.asarray([r.embedding for r in rows], dtype=np.float32),
            [r.text for r in rows], metas)


def raw_add(cfg: RagConfig, payload: tuple, model_id: str, dim: int) -> float:
    """Seconds for plain ``collection.add`` calls of max batch size into a new embedded collection."""
    import chromadb
    from chromadb.config import Settings

    ids, vectors, docs, metas = payload
    client = chromadb.PersistentClient(path=cfg.chroma.path, settings=Settings(anonymized_telemetry=False))
    hnsw = {"space": cfg.chroma.space, "ef_construction": cfg.chroma.hnsw_construction_ef,
            "max_neighbors": cfg.chroma.hnsw_max_neighbors, "ef_search": cfg.chroma.hnsw_search_ef}
    collection = client.create_collection(cfg.chroma.collection, configuration={"hnsw": hnsw},
                                          metadata={"embedding_model": model_id, "embedding_dim": dim},
                                          embedding_function=None)
    size = client.get_max_batch_size()
    start = time.perf_counter()
    for lo in range(0, len(ids), size):
        collection.add(ids=ids[lo:lo + size], embeddings=vectors[lo:lo + size], documents=docs[lo:lo + size],
                       metadatas=metas[lo:lo + size])
    seconds = time.perf_counter() - start
    assert collection.count() == len(ids), (collection.count(), len(ids))
    return seconds


def sync_load(chunks: Any, cfg: RagConfig, model_id: str, dim: int) -> float:
    from sparkrag.index.sync import sync_collection

    start = time.perf_counter()
    out = sync_collection(chunks, cfg, embedding_model=model_id, dim=dim)
    seconds = time.perf_counter() - start
    assert out["loaded"] == out["total"], out
    return seconds


def start_server(root: str) -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("chroma")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "chromadb.cli.cli"]
    env = dict(os.environ, RUST_LOG="warn")  # the server logs every request at INFO otherwise
    log = open(os.path.join(root, "server.log"), "wb")
    proc = subprocess.Popen(cmd + ["run", "--host", "127.0.0.1", "--port", str(port), "--path", f"{root}/data"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"chroma server did not start; see {root}/server.log")


def server_load(rows: Any, cfg: RagConfig, writers: int, model_id: str, dim: int) -> float:
    """Seconds for ``writers`` Spark tasks to write ``rows`` to a new server collection."""
    from sparkrag.index.sync import write_partitions_to_server
    from sparkrag.index.vectorstore import collection_ids, open_client

    part = rows.repartition(writers).cache()
    part.count()
    start = time.perf_counter()
    # replace=False as in the ingest: sync_collection deletes every id it reloads beforehand
    written = write_partitions_to_server(part, cfg.chroma, embedding_model=model_id, dim=dim, replace=False)
    seconds = time.perf_counter() - start
    part.unpersist()
    collection = open_client(cfg.chroma).get_collection(cfg.chroma.collection, embedding_function=None)
    assert written == len(collection_ids(collection)), written
    return seconds


# -- main ------------------------------------------------------------------------------
def _cfg(root: str, *overrides: str) -> RagConfig:
    return load_config(RagConfig, None, [f"tables.root={root}/tables", f"chroma.path={root}/chroma", *overrides])


def build_tables(spark: Any, cfg: RagConfig, rows: list[dict[str, Any]], *, parts: int, load_chunks: int,
                 model_id: str, dim: int) -> tuple[Any, Any]:
    """(texts DataFrame, chunks table to load into Chroma).

    Writing the chunks table embeds every text once, which also loads the encoder in the
    Spark workers before anything is timed. The table is then tiled (new ids, vectors
    nudged by seeded noise of scale 1e-3) to ``load_chunks`` rows: loading needs no more texts.
    """
    import numpy as np
    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    from sparkrag.embed import embed_dataframe
    from sparkrag.schemas import CHUNKS_SCHEMA
    from sparkrag.delta import open_tables

    schema = StructType([f for f in CHUNKS_SCHEMA.fields if f.name in rows[0]])
    texts = spark.createDataFrame(pd.DataFrame(rows)[schema.fieldNames()], schema).repartition(parts).cache()
    texts.count()
    lineage = [F.lit(model_id).alias("embedding_model"), F.lit(dim).alias("embedding_dim"),
               F.lit("bench").alias("run_id"), F.current_timestamp().alias("created_at")]
    embedded = embed_dataframe(texts, text_col="text", cfg=cfg.encoder).select("*", *lineage)
    tables = open_tables(spark, cfg.tables)
    columns = [F.col(f.name).cast(f.dataType) for f in CHUNKS_SCHEMA.fields]
    tables.write(embedded.select(*columns), "bench.embedded", mode="overwrite")
    base = tables.read("bench.embedded").toPandas()
    tiled = pd.concat([base] * -(-load_chunks // len(base)), ignore_index=True).iloc[:load_chunks].copy()
    copy = (tiled.index // len(base)).astype(str)
    tiled["chunk_id"] = tiled["chunk_id"] + "~" + copy
    noise = np.random.default_rng(0).normal(scale=1e-3, size=(len(tiled), dim)).astype(np.float32)
    tiled["embedding"] = list(np.stack(tiled["embedding"].to_numpy()).astype(np.float32) + noise)
    tables.write(spark.createDataFrame(tiled, CHUNKS_SCHEMA), cfg.names.chunks, mode="overwrite")
    return texts, tables.read(cfg.names.chunks)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=1200, help="chunk texts to embed")
    parser.add_argument("--load-chunks", type=int, default=5000, help="vectors to load into Chroma")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; each figure is the best round")
    parser.add_argument("--no-server", action="store_true", help="skip the chroma run server figures")
    args = parser.parse_args(argv)

    from sparkrag.embed import encoder_info
    from sparkrag.spark import get_spark

    root = tempfile.mkdtemp(prefix="bench-ingest-")
    cfg = _cfg(root)
    encoder = cfg.encoder  # batch 32, one torch thread per worker
    model_id, dim = encoder_info(encoder)
    spark = get_spark(SparkConfig(master="local[2]", app_name="bench-ingest"))
    parts = 2 * spark.sparkContext.defaultParallelism  # as the ingest job repartitions its documents
    rows = sample_chunks(args.chunks, encoder)
    call_rows = -(-len(rows) // parts)  # Spark encodes one Arrow batch per partition of this size
    texts_df, chunks = build_tables(spark, cfg, rows, parts=parts, load_chunks=args.load_chunks,
                                    model_id=model_id, dim=dim)
    n_load = chunks.count()
    payload = chroma_payload(chunks)
    texts = [r["text"] for r in rows]
    print(f"chunks={len(rows)} load_chunks={n_load} partitions={parts} encode call={call_rows} rows "
          f"batch={encoder.batch_size} threads/worker={encoder.torch_threads} cores={os.cpu_count()}", flush=True)
    spark_embed(spark, texts_df, encoder)  # untimed: Python workers the table write left idle load the model too
    figures: dict[str, list[float]] = {k: [] for k in ("spark", "one_process", "two_processes", "sync", "raw_add")}
    try:
        for r in range(args.repeat):
            figures["spark"].append(spark_embed(spark, texts_df, encoder))
            figures["one_process"].append(plain_processes(texts, 1, call_rows))
            figures["two_processes"].append(plain_processes(texts, 2, call_rows))
            figures["sync"].append(sync_load(chunks, _cfg(root, f"chroma.path={root}/sync{r}"), model_id, dim))
            figures["raw_add"].append(raw_add(_cfg(root, f"chroma.path={root}/raw{r}"), payload, model_id, dim))
            print(f"round {r + 1} (load {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in figures.items()), flush=True)
        if not args.no_server:
            figures.update(_server_figures(chunks, root, args.repeat, model_id, dim))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _report({"embed": len(rows), "load": n_load}, figures, args.repeat)


def _server_figures(chunks: Any, root: str, repeat: int, model_id: str, dim: int) -> dict[str, list[float]]:
    from sparkrag.index.sync import chroma_rows  # the ingest's own rows (doc_hash folded into metadata)

    rows = chroma_rows(chunks)
    server_root = os.path.join(root, "server")
    os.makedirs(server_root)
    proc, port = start_server(server_root)
    out: dict[str, list[float]] = {"server_1_writer": [], "server_2_writers": []}
    try:
        for r in range(repeat):
            for writers, key in ((1, "server_1_writer"), (2, "server_2_writers")):
                cfg = _cfg(root, "chroma.mode=server", f"chroma.port={port}", f"chroma.collection=w{writers}-{r}")
                out[key].append(server_load(rows, cfg, writers, model_id, dim))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def _report(n: dict[str, int], figures: dict[str, list[float]], repeat: int) -> dict[str, float]:
    embed_keys = ("spark", "one_process", "two_processes")
    rate = {k: n["embed" if k in embed_keys else "load"] / min(v) for k, v in figures.items() if v}
    print(f"\n== embedding (chunks/s, best of {repeat}) ==")
    print(f"spark embed_dataframe local[2]   {rate['spark']:8.1f}")
    print(f"one plain process, 1 thread      {rate['one_process']:8.1f}   spark/one = "
          f"{rate['spark'] / rate['one_process']:.2f}x")
    print(f"two plain processes, 1 thread    {rate['two_processes']:8.1f}   spark/two = "
          f"{rate['spark'] / rate['two_processes']:.2f}x   <- fair baseline on 2 cores (goal >= 0.90x)")
    print(f"\n== Chroma load (vectors/s, best of {repeat}) ==")
    print(f"raw collection.add, max batch    {rate['raw_add']:8.1f}")
    print(f"ingest sync_collection (embedded){rate['sync']:8.1f}   sync/raw = "
          f"{rate['sync'] / rate['raw_add']:.2f}x   (goal >= 0.80x)")
    if "server_1_writer" in rate:
        print(f"server, 1 writer task            {rate['server_1_writer']:8.1f}")
        print(f"server, 2 writer tasks           {rate['server_2_writers']:8.1f}   2/1 = "
              f"{rate['server_2_writers'] / rate['server_1_writer']:.2f}x")
    return rate


if __name__ == "__main__":
    main()
