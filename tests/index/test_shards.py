"""Sharded Chroma: real Spark local[2], real embedded Chroma and a real `chroma run` server.

Small synthetic corpora (24-dim unit vectors written straight into a chunks frame): the
encoder is not the point here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
import zlib

import numpy as np
import pytest
from chroma_server import chroma_server  # noqa: F401  (session fixture)

from sparkrag.index.sync import sync_collection
from sparkrag.config import ChromaConfig, IngestOptions, RagConfig, RetrievalConfig
from sparkrag.errors import VectorStoreError
from sparkrag.index.exact import ExactIndex
from sparkrag.retrieval.search import search
from sparkrag.index.layout import ShardStore, default_shard_count, shard_column, shard_of
from sparkrag.index.shards import ShardedIndex, open_index, prepare_index_fn, resolve_shards
from sparkrag.index.vectorstore import embedded_writer, open_client, open_collection, to_chroma_metadata, upsert_chunks

pytestmark = pytest.mark.filterwarnings("ignore:legacy embedding function config:DeprecationWarning")

MODEL, DIM = "test/encoder", 24
SCHEMA = ("chunk_id string, doc_id string, chunk_index int, text string, title string, "
          "metadata map<string,string>, doc_hash string, embedding array<float>")


def corpus(n_docs: int = 48, per_doc: int = 4, seed: int = 0, changed: dict[str, int] | None = None,
           dropped: tuple[str, ...] = ()) -> list[tuple]:
    """Chunk rows; ``changed`` maps doc_id -> new seed (new vectors, text and doc_hash)."""
    rows = []
    for d in range(n_docs):
        doc = f"doc-{d:03d}"
        if doc in dropped:
            continue
        dseed = (changed or {}).get(doc, seed * 1000 + d)
        vecs = np.random.default_rng(dseed).normal(size=(per_doc, DIM))
        vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
        for c in range(per_doc):
            rows.append((f"{doc}:{c}", doc, c, f"chunk {c} of {doc} v{dseed}", None if d % 3 == 0 else f"Doc {d}",
                         {"source": "wiki" if d % 2 else "blog"}, f"h{dseed}", vecs[c].tolist()))
    return rows


def chunks_frame(spark, rows):
    return spark.createDataFrame(rows, SCHEMA)


def rag_cfg(path, *, shards: int | None, collection: str = "shards", **chroma) -> RagConfig:
    return RagConfig(chroma=ChromaConfig(path=str(path), collection=collection, shards=shards, **chroma))


def sync(spark, rows, cfg: RagConfig) -> dict[str, int]:
    return sync_collection(chunks_frame(spark, rows), cfg, embedding_model=MODEL, dim=DIM)


def index_of(cfg: RagConfig):
    return open_index(cfg.chroma, resolve_shards(cfg.chroma))


def manifest(cfg: RagConfig) -> dict:
    with open(ShardStore(cfg.chroma.path, cfg.chroma.collection).location, encoding="utf-8") as fh:
        return json.load(fh)


def queries(n: int = 16, seed: int = 99) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, DIM))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def assert_same_top_k(got: dict, want: dict) -> None:
    """Same ids in the same order, except that ids at equal distances may swap (HNSW ties)."""
    for g_ids, g_d, w_ids, w_d in zip(got["ids"], got["distances"], want["ids"], want["distances"]):
        np.testing.assert_allclose(g_d, w_d, atol=1e-5)
        assert [round(d, 4) for d in g_d] == sorted(round(d, 4) for d in g_d)
        by_dist = lambda ids, ds: sorted(zip(np.round(ds, 4), ids))  # noqa: E731
        assert by_dist(g_ids, g_d) == by_dist(w_ids, w_d)


def test_shard_assignment_is_stable_and_spark_agrees(spark):
    ids = ["IPod#0", "doc-001", "Zürich", "東京#3", ""]
    assert [shard_of(i, 7) for i in ids] == [zlib.crc32(i.encode()) % 7 for i in ids]
    got = spark.createDataFrame([(i,) for i in ids], "doc_id string").select(shard_column("doc_id", 7)).collect()
    assert [r[0] for r in got] == [shard_of(i, 7) for i in ids]
    assert [default_shard_count(n, 8) for n in (0, 5_000, 100_001, 10_000_000)] == [1, 1, 2, 8]
    # one task per shard relies on the driver knowing where Spark's hash partitioner puts a key
    from pyspark.sql import functions as F

    from sparkrag.index.layout import partition_keys, spark_hash_long

    keys = [0, 1, 7, -1, 2**40 + 7, *partition_keys(5)]
    got = spark.createDataFrame([(k,) for k in keys], "k long").select(F.hash("k")).collect()
    assert [r[0] for r in got] == [spark_hash_long(k) for k in keys]
    assert [spark_hash_long(k) % 5 for k in partition_keys(5)] == [0, 1, 2, 3, 4]


def test_sharded_index_returns_the_single_index_top_k_with_and_without_filters(spark, tmp_path):
    rows = corpus()
    single, sharded = rag_cfg(tmp_path / "one", shards=1), rag_cfg(tmp_path / "three", shards=3)
    assert sync(spark, rows, single) == {"deleted": 0, "loaded": len(rows), "total": len(rows), "shards": 1,
                                         "shards_rewritten": 1, "shards_delta": 0,
                                         "rows_shipped": len(rows)}
    assert sync(spark, rows, sharded)["shards_rewritten"] == 3
    one, three = index_of(single), index_of(sharded)
    assert isinstance(three, ShardedIndex) and not isinstance(one, ShardedIndex)
    assert three.count() == one.count() == len(rows) and three.metadata["embedding_dim"] == DIM
    for shard, directory in enumerate(manifest(sharded)["dirs"]):  # every chunk of a document in its shard
        docs = {m["doc_id"] for m in open_client(dataclasses.replace(sharded.chroma, path=str(tmp_path / "three" /
                directory))).get_collection("shards").get(include=["metadatas"])["metadatas"]}
        assert docs and all(shard_of(d, 3) == shard for d in docs)
    exact = ExactIndex([r[0] for r in rows], [r[7] for r in rows], [r[3] for r in rows],
                       [to_chroma_metadata(r[1], r[2], r[4], {**r[5], "doc_hash": r[6]}) for r in rows], "cosine")
    include = ["documents", "metadatas", "distances", "embeddings"]
    for where, where_doc in [(None, None), ({"source": "wiki"}, None), (None, {"$contains": "chunk 1"}),
                             ({"source": "blog"}, {"$contains": "chunk 2"})]:
        kw = dict(query_embeddings=queries(), n_results=10, where=where, where_document=where_doc, include=include)
        got, want = three.query(**kw), one.query(**kw)
        assert_same_top_k(got, want)
        assert_same_top_k(got, exact.query(**kw))
        for g_docs, g_meta, g_emb, g_ids in zip(got["documents"], got["metadatas"], got["embeddings"], got["ids"]):
            assert len(g_emb) == len(g_ids) == len(g_docs) == len(g_meta)
            assert all(m["source"] == where["source"] for m in g_meta) if where else True
    # the retrieval code's search() over both gives the same candidates
    cfg = RetrievalConfig(fetch_k=8, query_batch_size=5)
    s3, s1 = search(three, queries(), cfg=cfg), search(one, queries(), cfg=cfg)
    assert [[round(c.distance, 4) for c in q] for q in s3] == [[round(c.distance, 4) for c in q] for q in s1]
    # get() finds ids in any shard (the hybrid retriever's contract)
    wanted = ["doc-000:0", "doc-017:3", "doc-030:1", "no-such-id"]
    got = three.get(ids=wanted, include=["embeddings", "documents", "metadatas"])
    assert sorted(got["ids"]) == sorted(wanted[:3]) and len(got["embeddings"]) == len(got["documents"]) == 3
    by_id = dict(zip(got["ids"], got["embeddings"]))
    np.testing.assert_allclose(by_id["doc-017:3"], next(r[7] for r in rows if r[0] == "doc-017:3"), atol=1e-6)


@pytest.mark.parametrize("compact_at", [0.0, 0.5])
def test_incremental_rerun_rewrites_only_changed_shards(spark, tmp_path, compact_at):
    """compact_at 0: a changed shard is a new directory; 0.5: its base stays and a delta holds the change."""
    cfg = rag_cfg(tmp_path / "chroma", shards=4, compact_at=compact_at)
    sync(spark, corpus(), cfg)
    first = manifest(cfg)
    changed, dropped = "doc-005", "doc-011"
    touched = {shard_of(changed, 4), shard_of(dropped, 4)}
    assert len(touched) < 4
    rows = corpus(changed={changed: 4242}, dropped=(dropped,))
    counts = sync(spark, rows, cfg)
    second = manifest(cfg)
    assert counts["shards_rewritten"] == len(touched) and counts["total"] == len(rows)
    assert counts["shards_delta"] == (len(touched) if compact_at else 0)
    shipped = sum(1 for r in rows if shard_of(r[1], 4) in touched) if not compact_at else 4  # 4: the new chunks
    assert counts["rows_shipped"] == shipped
    assert counts["loaded"] == 4 and counts["deleted"] == 8  # 4 replaced chunks + 4 of the dropped doc
    assert second["generation"] == first["generation"] + 1 and second["previous"] == first["dirs"]
    for s in range(4):
        if compact_at:
            assert second["dirs"][s] == first["dirs"][s] and bool(second["deltas"][s]) == (s in touched), s
        else:
            assert (second["dirs"][s] != first["dirs"][s]) == (s in touched) and second["deltas"] == [], s
    # the previous generation's directories stay for readers still on it
    assert all(os.path.isdir(tmp_path / "chroma" / d) for d in first["dirs"])
    got = index_of(cfg).get(ids=[f"{changed}:0", f"{dropped}:0"], include=["documents"])
    assert got["ids"] == [f"{changed}:0"] and got["documents"] == [f"chunk 0 of {changed} v4242"]
    assert index_of(cfg).count() == len(rows)
    # a rerun with no change touches nothing and publishes nothing
    assert sync(spark, rows, cfg)["shards_rewritten"] == 0
    assert manifest(cfg) == second


def on_disk_matches(cfg: RagConfig, folder) -> None:
    """The shard folder holds exactly what the manifest and its predecessor's readers need."""
    published = ShardStore(cfg.chroma.path, cfg.chroma.collection).read_manifest()
    assert set(os.listdir(folder)) == {os.path.basename(d) for d in published.kept_dirs()}


def test_delta_shards_answer_as_a_rebuilt_index(spark, tmp_path):
    """Base + delta (changed and dropped chunks hidden) gives a fresh build's top-k, gets and counts, on the
    driver, on executors (shared and snapshot) and in a partitioned worker; then compaction."""
    from sparkrag.index.segments import SegmentedShard
    from sparkrag.index.shards import open_shard_alone

    cfg = rag_cfg(tmp_path / "chroma", shards=2, compact_at=1.0)
    base_rows = corpus()
    sync(spark, base_rows, cfg)
    shard0 = [f"doc-{d:03d}" for d in range(48) if shard_of(f"doc-{d:03d}", 2) == 0]
    changed = {doc: 5000 + k for k, doc in enumerate(shard0[:8])}  # ~1/3 of shard 0 changes
    dropped = (shard0[8], shard0[9])
    rows = corpus(changed=changed, dropped=dropped)
    counts = sync(spark, rows, cfg)
    assert counts["shards_delta"] == 1 and counts["loaded"] == 32 and counts["deleted"] == 40
    assert counts["rows_shipped"] == 32  # only the changed rows travel with their vectors
    fresh = rag_cfg(tmp_path / "fresh", shards=2)
    sync(spark, rows, fresh)
    index, want = index_of(cfg), index_of(fresh)
    assert isinstance(index.shards[0], SegmentedShard) and index.count() == len(rows)
    # queries at the old vectors of the changed documents: the base's nearest are all hidden, so the
    # base is asked again for more (the loop in SegmentedShard.query)
    old = np.array([r[7] for r in base_rows if r[1] in changed or r[1] in dropped], dtype=np.float32)
    for q in (queries(), old):
        for where in (None, {"source": "wiki"}):
            kw = dict(query_embeddings=q, n_results=6, where=where, include=["distances", "documents", "embeddings"])
            got, expected = index.query(**kw), want.query(**kw)
            assert_same_top_k(got, expected)
            texts = {cid: t for ids, ts in zip(expected["ids"], expected["documents"]) for cid, t in zip(ids, ts)}
            assert all(texts.get(cid, t) == t for ids, ts in zip(got["ids"], got["documents"])
                       for cid, t in zip(ids, ts))
    ids = [f"{d}:{c}" for d in (*changed, *dropped) for c in range(4)]
    got = index.get(ids=ids, include=["documents"])
    assert sorted(zip(got["ids"], got["documents"])) == sorted(
        (r[0], r[3]) for r in rows if r[1] in changed)  # new text only; the dropped are gone
    # executors read the same (the delta is shipped with the base), and so does a partitioned worker
    expected_ids = index.query(query_embeddings=old, n_results=5, include=["distances"])["ids"]
    for access in ("shared", "snapshot"):
        index_fn = prepare_index_fn(spark, cfg.chroma, embedding_model=MODEL, dim=DIM, access=access)
        assert query_on_executors(spark, index_fn, old) == expected_ids
    ref = resolve_shards(cfg.chroma)[0]
    alone = open_shard_alone(cfg.chroma, ref, embedding_model=MODEL, dim=DIM)
    assert alone.query(query_embeddings=old, n_results=5, include=["distances"])["ids"] == \
        index.shards[0].query(query_embeddings=old, n_results=5, include=["distances"])["ids"]
    # a second change is a new delta against the same base; the first delta stays for its readers
    first = manifest(cfg)
    rows = corpus(changed={**changed, shard0[10]: 6000}, dropped=dropped)
    assert sync(spark, rows, cfg)["shards_delta"] == 1
    second = manifest(cfg)
    assert second["dirs"] == first["dirs"] and second["deltas"][0] != first["deltas"][0]
    on_disk_matches(cfg, tmp_path / "chroma" / "shards.shards")
    sync(spark, rows, fresh)
    kw = dict(query_embeddings=old, n_results=6, include=["distances"])
    assert_same_top_k(index_of(cfg).query(**kw), index_of(fresh).query(**kw))
    # past compact_at the shard is rebuilt (changes found mid-stream): a new base, no delta
    small = rag_cfg(tmp_path / "chroma", shards=2, compact_at=0.05)
    rows = corpus(changed={**changed, shard0[11]: 7000}, dropped=dropped)
    counts = sync(spark, rows, small)
    assert counts["shards_delta"] == 0 and counts["shards_rewritten"] == 1 and counts["rows_shipped"] == 36
    third = manifest(cfg)
    assert third["deltas"] == [] and third["dirs"][0] != first["dirs"][0] and third["dirs"][1] == first["dirs"][1]
    sync(spark, rows, fresh)
    assert_same_top_k(index_of(cfg).query(**kw), index_of(fresh).query(**kw))
    assert index_of(cfg).count() == len(rows)


def test_failed_build_leaves_the_published_index_unchanged(spark, tmp_path):
    cfg = rag_cfg(tmp_path / "chroma", shards=3)
    rows = corpus(n_docs=24)
    sync(spark, rows, cfg)
    before_manifest = manifest(cfg)
    before = index_of(cfg).query(query_embeddings=queries(), n_results=5, include=["distances"])
    bad = corpus(n_docs=24, changed={"doc-001": 7, "doc-002": 8, "doc-004": 9})
    broken = [r if r[0] != "doc-004:2" else (*r[:7], r[7][:5]) for r in bad]  # a wrong-dimension vector
    with pytest.raises(Exception, match="expected dimension 24, got 5"):
        sync(spark, broken, cfg)
    assert manifest(cfg) == before_manifest
    after = index_of(cfg).query(query_embeddings=queries(), n_results=5, include=["distances"])
    assert after["ids"] == before["ids"]
    # the next good run publishes, and removes whatever the failed one left behind
    assert sync(spark, bad, cfg)["shards_rewritten"] >= 1
    on_disk_matches(cfg, tmp_path / "chroma" / "shards.shards")


def test_only_the_changes_travel_to_delta_tasks(spark, tmp_path):
    """With every base's pairs on disk, a task gets the changed rows whole and the base pairs the table lost as
    keys (``_masked``), never the unchanged rows."""
    from sparkrag.index.build import ShardTask
    from sparkrag.index.shard_jobs import ShardSummaries, _diff_rows

    cfg = rag_cfg(tmp_path / "chroma", shards=2, compact_at=0.5)
    sync(spark, corpus(), cfg)
    rows = corpus(changed={"doc-001": 7, "doc-002": 8}, dropped=("doc-003",))
    keyed = ShardSummaries(chunks_frame(spark, rows)).keyed(2)
    dirs = manifest(cfg)["dirs"]
    tasks = [ShardTask(i, "shards", base=dirs[i], target="t", root=cfg.chroma.path, compact_at=0.5) for i in (0, 1)]
    diff, n_changed, cached = _diff_rows(keyed, tasks)
    got = [(r["chunk_id"], r["_masked"], r["embedding"] is not None, r["text"] is not None) for r in diff.collect()]
    cached.unpersist()
    new = {f"doc-00{d}:{c}" for d in (1, 2) for c in range(4)}
    assert n_changed == 8 and sorted(got) == sorted([(c, False, True, True) for c in new] +  # whole, new hash
                                                    [(c, True, False, False) for c in new] +  # old hash hidden
                                                    [(f"doc-003:{c}", True, False, False) for c in range(4)])
    assert _diff_rows(keyed, [dataclasses.replace(t, compact_at=0.0) for t in tasks]) is None  # no deltas: whole


def query_on_executors(spark, index_fn, q: np.ndarray) -> list[list[str]]:
    def run(batches):
        import pandas as pd

        index = index_fn()
        for pdf in batches:
            res = index.query(query_embeddings=np.stack(pdf["q"].tolist()).astype(np.float32), n_results=5,
                              include=["distances"])
            yield pd.DataFrame({"i": pdf["i"], "ids": res["ids"]})

    df = spark.createDataFrame([(i, v.tolist()) for i, v in enumerate(q)], "i int, q array<float>")
    rows = df.repartition(2).mapInPandas(run, "i int, ids array<string>").collect()
    return [list(r["ids"]) for r in sorted(rows, key=lambda r: r["i"])]


@pytest.mark.parametrize("access", ["shared", "snapshot"])
def test_executors_query_the_sharded_index(spark, tmp_path, access):
    cfg = rag_cfg(tmp_path / "chroma", shards=2)
    sync(spark, corpus(n_docs=24), cfg)
    expected = index_of(cfg).query(query_embeddings=queries(), n_results=5, include=["distances"])["ids"]
    index_fn = prepare_index_fn(spark, cfg.chroma, embedding_model=MODEL, dim=DIM, access=access)
    assert query_on_executors(spark, index_fn, queries()) == expected
    with pytest.raises(VectorStoreError, match="embedding_model: stored 'test/encoder', configured 'other'"):
        prepare_index_fn(spark, cfg.chroma, embedding_model="other", dim=DIM, access=access)


def test_server_mode_one_collection_per_shard(spark, chroma_server, tmp_path):
    name = f"sharded-{uuid.uuid4().hex[:8]}"
    cfg = RagConfig(chroma=ChromaConfig(mode="server", host=chroma_server.host, port=chroma_server.port,
                                        collection=name, shards=2))
    rows = corpus(n_docs=16)
    assert sync(spark, rows, cfg)["loaded"] == len(rows)
    client = open_client(cfg.chroma)
    assert sorted(c.name for c in client.list_collections() if c.name.startswith(name)) == [f"{name}-s0", f"{name}-s1"]
    unset = dataclasses.replace(cfg.chroma, shards=None)  # readers find the shard count on the server
    assert [r.collection for r in resolve_shards(unset)] == [f"{name}-s0", f"{name}-s1"]
    embedded = rag_cfg(tmp_path / "chroma", shards=1)
    sync(spark, rows, embedded)
    kw = dict(query_embeddings=queries(), n_results=6, include=["distances"])
    assert_same_top_k(open_index(unset, resolve_shards(unset)).query(**kw), index_of(embedded).query(**kw))
    again = sync(spark, corpus(n_docs=16, changed={"doc-003": 5}), dataclasses.replace(cfg, chroma=unset))
    assert (again["loaded"], again["deleted"], again["shards_rewritten"]) == (4, 4, 1)


def test_legacy_directory_is_read_then_rebuilt_into_the_versioned_layout(spark, tmp_path):
    cfg = rag_cfg(tmp_path / "chroma", shards=None)
    rows = corpus(n_docs=8)
    with embedded_writer(cfg.chroma) as client:  # the pre-shard layout: chroma.sqlite3 at chroma.path
        col = open_collection(client, cfg.chroma, embedding_model=MODEL, dim=DIM, create=True)
        upsert_chunks(col, [r[0] for r in rows[:10]], [r[7] for r in rows[:10]], [r[3] for r in rows[:10]],
                      [to_chroma_metadata(r[1], r[2], r[4], r[5]) for r in rows[:10]])
    assert [r.path for r in resolve_shards(cfg.chroma)] == [str(tmp_path / "chroma")]
    assert sync(spark, rows, cfg)["loaded"] == len(rows)  # rebuilt from the chunks table, 1 shard (small)
    assert manifest(cfg)["shards"] == 1
    assert open_client(cfg.chroma).get_collection("shards").count() == len(rows)  # resolves the manifest
    with pytest.raises(VectorStoreError, match="versioned index"):
        with embedded_writer(cfg.chroma):
            pass
    # a different shard count rebuilds every shard; a full refresh rebuilds from empty
    resharded = dataclasses.replace(cfg, chroma=dataclasses.replace(cfg.chroma, shards=2))
    assert sync(spark, rows, resharded)["shards_rewritten"] == 2
    full = dataclasses.replace(resharded, ingest=IngestOptions(full_refresh=True))
    assert sync(spark, rows, full)["loaded"] == len(rows)
    assert index_of(cfg).count() == len(rows) and manifest(cfg)["generation"] == 3


@pytest.mark.slow
def test_build_killed_midway_leaves_the_published_index_unchanged(spark, tmp_path):
    """The real thing: the sync in its own process, SIGKILLed after one shard's new directory is written."""
    import glob
    import pickle
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    cfg = rag_cfg(tmp_path / "chroma", shards=2)
    first = [d for d in range(40) if shard_of(f"doc-{d:03d}", 2) == 0][0]
    sync(spark, corpus(n_docs=40), cfg)
    before_manifest = manifest(cfg)
    before = index_of(cfg).query(query_embeddings=queries(), n_results=5, include=["distances"])
    # shard 0: one changed document (quick); shard 1: ~1,500 new chunks (slow)
    rows = [r for r in corpus(n_docs=800, changed={f"doc-{first:03d}": 777})
            if int(r[1][4:]) < 40 or shard_of(r[1], 2) == 1]
    (tmp_path / "rows.pkl").write_bytes(pickle.dumps(rows))
    code = "\n".join([
        f"import pickle, sys; sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]",
        "import test_shards as t", "from sparkrag.config import SparkConfig", "from sparkrag.spark import get_spark",
        "spark = get_spark(SparkConfig(master='local[2]'))",
        f"rows = pickle.load(open({str(tmp_path / 'rows.pkl')!r}, 'rb'))",
        f"t.sync(spark, rows, t.rag_cfg({str(tmp_path / 'chroma')!r}, shards=2))"])
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = str(tmp_path / "chroma" / "shards.shards" / "s000-g000002-*")
    try:
        deadline = time.monotonic() + 300
        while not [p for p in glob.glob(pattern) if ".partial" not in p]:
            assert proc.poll() is None and time.monotonic() < deadline, "the sync ended before shard 0 was written"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and its Python workers
        proc.wait()
    assert manifest(cfg) == before_manifest
    assert index_of(cfg).query(query_embeddings=queries(), n_results=5, include=["distances"])["ids"] == before["ids"]
    counts = sync(spark, rows, cfg)  # the rerun publishes and removes the killed build's directories
    assert counts["total"] == len(rows) and counts["shards_rewritten"] == 2
    on_disk_matches(cfg, tmp_path / "chroma" / "shards.shards")


def test_hadoop_store_publishes_through_the_filesystem_api(spark, tmp_path):
    """The object-storage path (abfss://, s3a://, dbfs:) on Hadoop's local filesystem: put, fetch, publish, GC."""
    from sparkrag.index.layout import HadoopShardStore, Manifest

    src = tmp_path / "built"
    src.mkdir()
    (src / "chroma.sqlite3").write_bytes(b"shard bytes")
    store = HadoopShardStore(f"file://{tmp_path / 'remote'}", "col", spark)
    assert store.read_manifest() is None
    dirs = [store.new_dir(0, 1), store.new_dir(0, 2)]
    store.put(str(src), dirs[0])
    first = Manifest("col", 1, (dirs[0],), ("f",), (1,), MODEL, DIM, "cosine", generation=1)
    store.publish(first)
    store.put(str(src), dirs[1])
    store.publish(dataclasses.replace(first, dirs=(dirs[1],), generation=2, previous=(dirs[0],)))
    assert store.read_manifest().dirs == (dirs[1],)
    store.put(str(src), store.new_dir(0, 3))  # an orphan of a killed build
    store.publish(dataclasses.replace(first, dirs=(dirs[1],), generation=3, previous=(dirs[1],)))
    assert os.listdir(tmp_path / "remote" / "col.shards") == [os.path.basename(dirs[1])]
    local = tmp_path / "copy"
    local.mkdir()
    store.fetch(dirs[1], str(local))
    assert (local / "chroma.sqlite3").read_bytes() == b"shard bytes"
