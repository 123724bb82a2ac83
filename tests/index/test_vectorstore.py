"""vectorstore: real embedded ChromaDB, a real `chroma run` server, real Spark local[2]."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from chroma_server import chroma_server, free_port  # noqa: F401  (session fixture)

from sparkrag.config import ChromaConfig
from sparkrag.errors import ConfigError, SchemaError, VectorStoreError
from sparkrag.index.sync import write_partitions_to_server
from sparkrag.index.shards import make_collection_fn, snapshot_for_executors
from sparkrag.index.vectorstore import (
    collection_ids,
    delete_chunks,
    embedded_writer,
    open_client,
    open_collection,
    to_chroma_metadata,
    upsert_chunks,
    verify_collection,
)

# embedding_function=None is stored as a "legacy" config; reading `configuration` warns.
pytestmark = pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")

MODEL = "test/encoder"


def unit_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def payload(n: int, dim: int = 8, seed: int = 0, prefix: str = "c"):
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    docs = [f"chunk number {i} of the test corpus" for i in range(n)]
    metas = [to_chroma_metadata(f"d{i // 3}", i % 3, None if i % 2 else f"Title {i}", {"source": "wiki"})
             for i in range(n)]
    return ids, unit_vectors(n, dim, seed), docs, metas


@pytest.fixture
def embedded_cfg(tmp_path) -> ChromaConfig:
    return ChromaConfig(mode="embedded", path=str(tmp_path / "chroma"), collection="tests-embedded")


def new_collection(cfg: ChromaConfig, dim: int = 8):
    return open_collection(open_client(cfg), cfg, embedding_model=MODEL, dim=dim, create=True)


def test_import_loads_no_chromadb():
    code = ("import sys, sparkrag.index.vectorstore, sparkrag.retrieval.search; "
            "print(sorted(m for m in ('chromadb', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("space", ["cosine", "ip", "l2"])
def test_collection_configuration_and_metadata_honoured(tmp_path, space):
    cfg = ChromaConfig(path=str(tmp_path / "db"), collection="cfg-test", space=space, hnsw_construction_ef=64,
                       hnsw_max_neighbors=12, hnsw_search_ef=77)
    col = new_collection(cfg, dim=8)
    hnsw = col.configuration["hnsw"]
    assert (hnsw["space"], hnsw["ef_construction"], hnsw["max_neighbors"], hnsw["ef_search"]) == (space, 64, 12, 77)
    assert col.metadata == {"embedding_model": MODEL, "embedding_dim": 8, "space": space}
    # the index really uses the space: a vector and twice itself are 0 apart only in cosine
    v = unit_vectors(1, 8)
    upsert_chunks(col, ["a"], 2 * v, ["x"], [to_chroma_metadata("d", 0, None, None)])
    dist = col.query(query_embeddings=v, n_results=1, include=["distances"])["distances"][0][0]
    expected = {"cosine": 0.0, "ip": 1.0 - 2.0, "l2": 1.0}[space]
    assert dist == pytest.approx(expected, abs=1e-5)


def test_new_search_ef_applied_to_existing_collection(embedded_cfg):
    new_collection(embedded_cfg)
    cfg = ChromaConfig(path=embedded_cfg.path, collection=embedded_cfg.collection, hnsw_search_ef=200)
    col = open_collection(open_client(cfg), cfg, embedding_model=MODEL, dim=8, create=False)
    assert col.configuration["hnsw"]["ef_search"] == 200


def test_encoder_or_space_mismatch_refused(embedded_cfg):
    new_collection(embedded_cfg, dim=8)
    client = open_client(embedded_cfg)
    with pytest.raises(VectorStoreError, match=r"embedding_model: stored 'test/encoder', configured 'other'.*"
                                               r"--full-refresh"):
        open_collection(client, embedded_cfg, embedding_model="other", dim=8, create=True)
    with pytest.raises(VectorStoreError, match="embedding_dim: stored 8, configured 384"):
        open_collection(client, embedded_cfg, embedding_model=MODEL, dim=384, create=False)
    l2 = ChromaConfig(path=embedded_cfg.path, collection=embedded_cfg.collection, space="l2")
    with pytest.raises(VectorStoreError, match="space: stored 'cosine', configured 'l2'"):
        open_collection(client, l2, embedding_model=MODEL, dim=8, create=True)


def test_missing_collection_without_create(embedded_cfg):
    with pytest.raises(VectorStoreError, match="'tests-embedded' does not exist"):
        open_collection(open_client(embedded_cfg), embedded_cfg, embedding_model=MODEL, dim=8, create=False)


def test_to_chroma_metadata_drops_none_and_refuses_reserved_keys():
    assert to_chroma_metadata("d1", 2, None, {"source": "wiki", "lang": None}) == {
        "doc_id": "d1", "chunk_index": 2, "source": "wiki"}
    assert to_chroma_metadata("d1", 0, "T", None)["title"] == "T"
    with pytest.raises(SchemaError, match="'title' of document 'd1' collides"):
        to_chroma_metadata("d1", 0, "T", {"title": "other"})
    for bad in ("$x", "#x", "chroma:document", ""):
        with pytest.raises(SchemaError, match="Chroma rejects or drops"):
            to_chroma_metadata("d1", 0, None, {bad: "v"})


def test_verify_detects_missing_and_extra(embedded_cfg):
    col = new_collection(embedded_cfg)
    ids, vecs, docs, metas = payload(20)
    upsert_chunks(col, ids, vecs, docs, metas)
    assert verify_collection(col, set(ids)) == {"expected": 20, "found": 20, "missing": 0, "extra": 0}
    expected = set(ids[2:]) | {"ghost-1", "ghost-2", "ghost-3"}
    with pytest.raises(VectorStoreError, match=r"3 missing \(e.g. \['ghost-1'.*2 extra \(e.g. \['c0000', 'c0001'\]"):
        verify_collection(col, expected)
    delete_chunks(col, ids[:2] + ["never-existed"], batch_size=2)
    assert collection_ids(col, page_size=7) == set(ids[2:])


def test_delete_then_add_replaces_changed_vectors(embedded_cfg):
    col = new_collection(embedded_cfg)
    ids, old, docs, metas = payload(12, seed=1)
    upsert_chunks(col, ids, old, docs, metas)
    new = unit_vectors(12, seed=2)
    new_docs = [d + " (edited)" for d in docs]
    stats = upsert_chunks(col, ids[:6] + ["fresh"], np.vstack([new[:6], new[6:7]]), new_docs[:6] + ["fresh text"],
                          metas[:6] + [to_chroma_metadata("d9", 0, None, None)])
    assert stats["replaced"] == 6 and stats["written"] == 7
    got = col.get(ids=ids[:6], include=["embeddings", "documents"])
    order = [ids.index(i) for i in got["ids"]]
    np.testing.assert_allclose(np.asarray(got["embeddings"]), new[order], atol=1e-6)
    assert got["documents"] == [new_docs[i] for i in order]
    hits = col.query(query_embeddings=new[:6], n_results=1, include=["distances"])
    assert [h[0] for h in hits["ids"]] == ids[:6]
    assert col.count() == 13
    # without replace, Chroma's add silently keeps the old vectors: why replace is the default
    upsert_chunks(col, ids[6:8], new[6:8], docs[6:8], metas[6:8], replace=False)
    kept = col.get(ids=[ids[6]], include=["embeddings"])["embeddings"][0]
    np.testing.assert_allclose(kept, old[6], atol=1e-6)


def test_batches_respect_batch_size_and_report_progress(embedded_cfg):
    col = new_collection(embedded_cfg)
    ids, vecs, docs, metas = payload(30)
    seen = []
    stats = upsert_chunks(col, ids, vecs, docs, metas, batch_size=7, progress=lambda d, t, s: seen.append((d, t)))
    assert stats["batches"] == 5
    assert seen == [(7, 30), (14, 30), (21, 30), (28, 30), (30, 30)]
    assert col.count() == 30


def test_batches_never_exceed_client_max(embedded_cfg):
    col = new_collection(embedded_cfg, dim=2)
    limit = open_client(embedded_cfg).get_max_batch_size()
    n = limit + 5
    ids = [f"i{i}" for i in range(n)]
    metas = [{"doc_id": "d", "chunk_index": i} for i in range(n)]
    stats = upsert_chunks(col, ids, unit_vectors(n, 2), ["t"] * n, metas, batch_size=10 * limit, replace=False)
    assert stats["batches"] == 2 and col.count() == n


def test_bad_write_inputs_rejected(embedded_cfg):
    col = new_collection(embedded_cfg)
    ids, vecs, docs, metas = payload(3)
    with pytest.raises(SchemaError, match=r"1 chunk_id\(s\) repeat, e.g. \['c0000'\]"):
        upsert_chunks(col, [ids[0], ids[0], ids[2]], vecs, docs, metas)
    with pytest.raises(VectorStoreError, match="expected vectors of dimension 8, got 4"):
        upsert_chunks(col, ids, vecs[:, :4], docs, metas)
    with pytest.raises(SchemaError, match="expected 3 documents and metadatas, got 2 and 3"):
        upsert_chunks(col, ids, vecs, docs[:2], metas)


def test_single_writer_lock(embedded_cfg):
    with embedded_writer(embedded_cfg) as client:
        open_collection(client, embedded_cfg, embedding_model=MODEL, dim=8, create=True)
        with pytest.raises(VectorStoreError, match="another process is writing it"):
            with embedded_writer(embedded_cfg):
                pass
        spark_free = ChromaConfig(path=embedded_cfg.path)
        with pytest.raises(VectorStoreError, match="cannot snapshot"):
            snapshot_for_executors(None, spark_free)  # the lock is checked before Spark is touched
    with embedded_writer(embedded_cfg):  # released on exit
        pass


def test_server_unreachable_names_host_and_port():
    port = free_port()
    cfg = ChromaConfig(mode="server", host="127.0.0.1", port=port, connect_retries=2)
    start = time.monotonic()
    with pytest.raises(VectorStoreError, match=rf"127\.0\.0\.1:{port} after 3 attempts"):
        open_client(cfg, backoff_s=0.01)
    assert time.monotonic() - start < 10


def chunks_frame(spark, n: int, dim: int, seed: int):
    from sparkrag.schemas import CHUNKS_SCHEMA

    vecs = unit_vectors(n, dim, seed)
    rows = [(f"s{i:03d}", f"doc{i // 4}", i % 4, f"server chunk {i}", None if i % 5 == 0 else f"Doc {i // 4}",
             {"source": "blog" if i % 2 else "wiki", "empty": None}, vecs[i].tolist()) for i in range(n)]
    schema = "chunk_id string, doc_id string, chunk_index int, text string, title string, " \
             "metadata map<string,string>, embedding array<float>"
    assert CHUNKS_SCHEMA["metadata"].dataType.simpleString() == "map<string,string>"
    return spark.createDataFrame(rows, schema).repartition(3), vecs


def test_server_mode_executor_writes_land(spark, chroma_server):
    cfg = ChromaConfig(mode="server", host=chroma_server.host, port=chroma_server.port,
                       collection="executor-writes", batch_size=4)
    df, vecs = chunks_frame(spark, 40, 8, seed=3)
    assert write_partitions_to_server(df, cfg, embedding_model=MODEL, dim=8) == 40
    col = open_collection(open_client(cfg), cfg, embedding_model=MODEL, dim=8, create=False)
    verify_collection(col, {f"s{i:03d}" for i in range(40)})
    got = col.get(ids=["s006", "s010"], include=["metadatas", "embeddings"])
    meta = dict(zip(got["ids"], got["metadatas"]))
    assert meta["s006"] == {"doc_id": "doc1", "chunk_index": 2, "title": "Doc 1", "source": "wiki"}
    assert "title" not in meta["s010"] and "empty" not in meta["s010"]
    # a second run with changed vectors replaces them (no duplicates, new vectors found)
    df2, vecs2 = chunks_frame(spark, 40, 8, seed=4)
    assert write_partitions_to_server(df2, cfg, embedding_model=MODEL, dim=8) == 40
    assert col.count() == 40
    hits = col.query(query_embeddings=vecs2[:5], n_results=1, include=[])["ids"]
    assert [h[0] for h in hits] == [f"s{i:03d}" for i in range(5)]


def test_server_write_checks_before_spark_action(spark, chroma_server):
    cfg = ChromaConfig(mode="server", host=chroma_server.host, port=chroma_server.port, collection="never-made")
    df, _ = chunks_frame(spark, 4, 8, seed=5)
    with pytest.raises(SchemaError, match=r"missing column\(s\) 'embedding'"):
        write_partitions_to_server(df.drop("embedding"), cfg, embedding_model=MODEL, dim=8)
    with pytest.raises(ConfigError, match="chroma.mode"):
        write_partitions_to_server(df, ChromaConfig(mode="embedded"), embedding_model=MODEL, dim=8)
    with pytest.raises(Exception, match="embedding: expected dimension 16, got 8"):
        write_partitions_to_server(df, cfg, embedding_model=MODEL, dim=16)


def query_on_executors(spark, make_collection, queries: np.ndarray) -> list[list[str]]:
    def run(batches):
        import pandas as pd

        col = make_collection()
        for pdf in batches:
            q = np.stack([np.asarray(v, np.float32) for v in pdf["q"]])
            res = col.query(query_embeddings=q, n_results=3, include=[])
            yield pd.DataFrame({"i": pdf["i"], "ids": res["ids"]})

    df = spark.createDataFrame([(i, q.tolist()) for i, q in enumerate(queries)], "i int, q array<float>")
    rows = df.repartition(2).mapInPandas(run, "i int, ids array<string>").collect()
    return [list(r["ids"]) for r in sorted(rows, key=lambda r: r["i"])]


def test_snapshot_shipped_with_add_archive_is_queryable_on_executors(spark, embedded_cfg):
    ids, vecs, docs, metas = payload(300, dim=16, seed=6)
    with embedded_writer(embedded_cfg) as client:
        col = open_collection(client, embedded_cfg, embedding_model=MODEL, dim=16, create=True)
        upsert_chunks(col, ids, vecs, docs, metas)
    queries = vecs[:10] + 0.01
    expected = col.query(query_embeddings=queries, n_results=3, include=[])["ids"]
    name = snapshot_for_executors(spark, embedded_cfg)
    assert name.startswith("chroma-tests-embedded-") and name.endswith(".tar.gz")
    got = query_on_executors(spark, make_collection_fn(embedded_cfg, snapshot=name, embedding_model=MODEL, dim=16),
                             queries)
    assert got == expected
    # "shared path" mode opens cfg.path itself (local mode / shared disk)
    assert query_on_executors(spark, make_collection_fn(embedded_cfg), queries) == expected


def test_snapshot_requires_a_database(spark, tmp_path):
    with pytest.raises(VectorStoreError, match="no Chroma database"):
        snapshot_for_executors(spark, ChromaConfig(path=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="chroma.mode"):
        snapshot_for_executors(spark, ChromaConfig(mode="server"))
