"""Keep a (sharded) Chroma index equal to the chunks Delta table (the ingest job's last step).

The chunks table is the source of truth; Chroma is derived from it. Each chunk's
``doc_hash`` travels in its Chroma metadata, so a sync can tell a current vector from a
stale one with the same id (a document whose title or metadata changed keeps its chunk
ids). Chunks go to shard ``crc32(doc_id) % N`` (:mod:`sparkrag.index.layout`).

Embedded: the driver compares each shard's fingerprint of ``(chunk_id, doc_hash)`` pairs
with the published manifest; each changed shard is brought in step by one Spark task (its
only writer), which writes a new directory: a delta over the shard's base when the changes
are few, else a rebuilt shard (:mod:`sparkrag.index.build`); the driver then publishes all
of them at once by replacing the manifest. A build killed anywhere leaves the
published index as it was; unchanged shards are not touched. Server: one task per shard
collection brings it in step in place.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from typing import TYPE_CHECKING, Any, Iterator

from sparkrag.config import ChromaConfig, RagConfig
from sparkrag.errors import ConfigError, VectorStoreError
from sparkrag.index.layout import Manifest, ShardStore, default_shard_count, is_legacy_directory, open_store, \
    server_shard_names
from sparkrag.index.shard_jobs import ShardSummaries, chroma_rows, run_shard_tasks

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["open_for_ingest", "sync_collection", "chroma_rows", "write_partitions_to_server", "ShardSummaries"]

log = logging.getLogger(__name__)


def _server_shards(cfg: ChromaConfig) -> list[str]:
    """Names of the shard collections of ``cfg.collection`` that exist on the server."""
    import re

    from sparkrag.index.vectorstore import open_client

    names = [c if isinstance(c, str) else c.name for c in open_client(cfg).list_collections()]
    pattern = re.compile(rf"{re.escape(cfg.collection)}(-s\d+)?")
    return sorted(n for n in names if pattern.fullmatch(n))


def open_for_ingest(cfg: RagConfig, *, embedding_model: str, dim: int, full_refresh: bool) -> None:
    """Check the published index against the encoder before any work is done.

    A full refresh checks nothing: embedded, the rebuild is published atomically by the
    sync; server, the shard collections are dropped here.

    Raises:
        VectorStoreError: the index was built with another encoder/dimension/space (the
            message says what is stored and suggests ``--full-refresh``).
    """
    from sparkrag.index.layout import check_stored_encoder
    from sparkrag.index.vectorstore import open_client, open_collection, persistent_client

    chroma = cfg.chroma
    if chroma.mode == "server":
        client = open_client(chroma)
        for name in _server_shards(chroma):
            if full_refresh:
                client.delete_collection(name)
                log.info("full refresh: dropped Chroma collection %r", name)
            else:
                named = dataclasses.replace(chroma, collection=name)
                open_collection(client, named, embedding_model=embedding_model, dim=dim, create=False)
        return
    if full_refresh or "://" in chroma.path:
        return
    manifest = ShardStore(chroma.path, chroma.collection).read_manifest()
    if manifest is not None:
        check_stored_encoder(dataclasses.asdict(manifest), chroma, embedding_model, dim)
    elif is_legacy_directory(chroma.path):
        from chromadb.errors import NotFoundError

        try:
            open_collection(persistent_client(chroma.path), chroma, embedding_model=embedding_model, dim=dim,
                            create=False)
        except VectorStoreError as exc:
            if "does not exist" not in str(exc):
                raise
        except NotFoundError:
            pass


def _shard_count(cfg: RagConfig, existing: int | None, n_chunks: int, parallelism: int) -> int:
    if cfg.chroma.shards is not None:
        if cfg.chroma.shards < 1:
            raise ConfigError(f"chroma.shards: expected >= 1 or null, got {cfg.chroma.shards}")
        return cfg.chroma.shards
    return existing or default_shard_count(n_chunks, parallelism)


def sync_collection(chunks: "DataFrame | None", cfg: RagConfig, *, embedding_model: str, dim: int,
                    spark: "SparkSession | None" = None, summaries: ShardSummaries | None = None) -> dict[str, int]:
    """Rebuild the shards whose chunks changed, each in its own Spark task, verify, then publish.

    Args:
        chunks: the chunks table (None: there is none yet: an empty index is published).
        spark: the session (default: the chunks frame's, else the active one).
        summaries: the table's shard summaries, when the caller shares them (else computed here).

    Returns:
        ``{"deleted", "loaded", "total", "shards", "shards_rewritten", "shards_delta", "rows_shipped"}``
        (shards_delta: of the rewritten shards, those written as a delta over their base;
        rows_shipped: chunk rows sent whole, vectors and text, to the build tasks).

    Raises:
        VectorStoreError: a shard disagrees with the table after its load (nothing is published).
    """
    from pyspark.sql import SparkSession

    spark = spark or (chunks.sparkSession if chunks is not None else SparkSession.getActiveSession())
    if summaries is None:
        summaries = ShardSummaries(chunks)
        try:
            return sync_collection(chunks, cfg, embedding_model=embedding_model, dim=dim, spark=spark,
                                   summaries=summaries)
        finally:
            summaries.release()
    chroma = cfg.chroma
    if chroma.mode == "server":
        return _sync(spark, summaries, cfg, None, embedding_model=embedding_model, dim=dim)
    store = open_store(chroma, spark)
    if type(store) is ShardStore:
        from sparkrag.index.vectorstore import _exclusive_lock

        with _exclusive_lock(store.root, purpose="publish"):  # one ingest per index at a time
            return _sync(spark, summaries, cfg, store, embedding_model=embedding_model, dim=dim)
    return _sync(spark, summaries, cfg, store, embedding_model=embedding_model, dim=dim)


def _sync(spark: "SparkSession", summaries: ShardSummaries, cfg: RagConfig, store: ShardStore | None, *,
          embedding_model: str, dim: int) -> dict[str, int]:
    from sparkrag.index.build import ShardTask

    chroma, full = cfg.chroma, cfg.ingest.full_refresh
    if not 0 <= chroma.compact_at <= 1:
        raise ConfigError(f"chroma.compact_at: expected a fraction in [0, 1] (0: always rebuild a changed shard), "
                          f"got {chroma.compact_at}")
    current = store.read_manifest() if store is not None else None
    manifest = None if full else current  # a full refresh rebuilds every shard from empty
    existing = manifest.shards if manifest else (None if store is not None or full else len(_server_shards(chroma)))
    parallelism = max(spark.sparkContext.defaultParallelism, 1)
    chunks = summaries.chunks
    n_chunks = chunks.count() if chunks is not None and chroma.shards is None and not existing else 0
    n = _shard_count(cfg, existing, n_chunks, parallelism)
    fingerprints, counts = summaries(n)
    same_layout = manifest is not None and manifest.shards == n
    if store is None:
        names = server_shard_names(chroma.collection, n)
        tasks = [ShardTask(i, names[i]) for i in range(n)]  # each diffs its collection; unchanged ones write nothing
    else:
        generation = (current.generation if current else 0) + 1
        hadoop = type(store) is not ShardStore
        tasks = [ShardTask(i, chroma.collection, base=manifest.dirs[i] if same_layout and not hadoop else None,
                           target=store.new_dir(i, generation), root=None if hadoop else store.root,
                           compact_at=float(chroma.compact_at))
                 for i in range(n) if not same_layout or manifest.fingerprints[i] != fingerprints[i]]
    log.info("Chroma %r: %d chunks in %d shard(s); rebuilding %s", chroma.collection, sum(counts), n,
             [t.shard for t in tasks] if len(tasks) < n else "all")
    results, whole = _run_tasks(spark, summaries, n, tasks, chroma, embedding_model=embedding_model, dim=dim)
    for r in results:
        log.info("shard %d: %d vectors, %d loaded, %d deleted in %.1fs (+%.1fs copying) -> %s", r["shard"], r["total"],
                 r["loaded"], r["deleted"], r["load_seconds"], r["copy_seconds"],
                 f"{r['target']} + delta {r['delta']}" if r.get("delta") else r["target"])
        if r["fingerprint"] != fingerprints[r["shard"]]:
            raise VectorStoreError(f"shard {r['shard']}: built {r['total']} vectors that differ from the chunks "
                                   f"table's {counts[r['shard']]}; the table changed during the sync? rerun")
    if store is None:
        _drop_other_server_shards(chroma, server_shard_names(chroma.collection, n))
    elif tasks or manifest is None:
        _publish(store, manifest if same_layout else None, results, fingerprints, counts, n, chroma,
                 embedding_model=embedding_model, dim=dim, previous=current)
    touched = [r for r in results if r.get("target") or r["loaded"] or r["deleted"]]
    return {"deleted": sum(int(r["deleted"]) for r in results), "loaded": sum(int(r["loaded"]) for r in results),
            "total": sum(counts), "shards": n, "shards_rewritten": len(touched),
            "shards_delta": sum(1 for r in results if r.get("delta")),
            "rows_shipped": whole if whole is not None else sum(counts[t.shard] for t in tasks)}


def _drop_other_server_shards(chroma: ChromaConfig, keep: list[str]) -> None:
    """After a re-shard on a server, drop the collections of the old layout (readers would find them)."""
    from sparkrag.index.vectorstore import open_client

    stale = [name for name in _server_shards(chroma) if name not in keep]
    for name in stale:
        open_client(chroma).delete_collection(name)
        log.info("dropped Chroma collection %r of the previous shard layout", name)


def _run_tasks(spark: "SparkSession", summaries: ShardSummaries, n: int, tasks: list[Any], chroma: ChromaConfig, *,
               embedding_model: str, dim: int) -> tuple[list[dict[str, Any]], int | None]:
    """One Spark task per shard task; each builds its Chroma shard (:mod:`sparkrag.index.build`)."""
    from sparkrag.index.build import RESULT_SCHEMA, build_shard

    def build(task: Any, batches: Iterator["pd.DataFrame"]) -> dict[str, Any]:
        return build_shard(task, batches, chroma, embedding_model=embedding_model, dim=dim)

    return run_shard_tasks(spark, summaries, n, tasks, build, RESULT_SCHEMA)


def _publish(store: ShardStore, base: Manifest | None, results: list[dict[str, Any]], fingerprints: list[str],
             counts: list[int], n: int, chroma: ChromaConfig, *, embedding_model: str, dim: int,
             previous: Manifest | None) -> None:
    """Upload returned archives (Hadoop stores), then replace the manifest: the one atomic step."""
    from sparkrag.index.build import extract_archive

    dirs = list(base.dirs) if base is not None else [""] * n
    deltas = [base.delta(i) if base is not None else "" for i in range(n)]
    for r in results:
        if r.get("archive") is not None:
            local = extract_archive(r["archive"])
            try:
                store.put(local, r["target"])
            finally:
                shutil.rmtree(local, ignore_errors=True)
        dirs[r["shard"]], deltas[r["shard"]] = r["target"], r.get("delta") or ""
    missing = [i for i, d in enumerate(dirs) if not d]
    if missing:
        raise VectorStoreError(f"shards {missing} were not built; nothing published")
    store.publish(Manifest(
        collection=chroma.collection, shards=n, dirs=tuple(dirs), fingerprints=tuple(fingerprints),
        counts=tuple(counts), embedding_model=embedding_model, embedding_dim=int(dim), space=chroma.space,
        generation=(previous.generation if previous else 0) + 1, deltas=tuple(deltas) if any(deltas) else (),
        previous=tuple(previous.live_dirs()) if previous else ()))
    if previous is None and is_legacy_directory(chroma.path):
        log.warning("%s also holds an unversioned (pre-shard) Chroma database: it is no longer read and can be "
                    "removed (keep %s and %s)", chroma.path, store.location, store.shards_folder)


def write_partitions_to_server(df: "DataFrame", cfg: ChromaConfig, *, embedding_model: str, dim: int,
                               replace: bool = True, backoff_s: float = 0.5) -> int:
    """Write a chunks DataFrame to one Chroma server collection from the executors, one client per worker.

    The driver creates/checks the collection first; each task then upserts its Arrow
    batches (at most the server's max batch size per call). The server serialises writes,
    so this scales no further than one writer: the ingest writes one collection per shard.

    Returns:
        The number of chunks written.

    Raises:
        ConfigError: ``cfg.mode`` is not ``server``.
        SchemaError: a required column is missing (checked before any Spark action).
        VectorStoreError: server unreachable, or the collection belongs to another encoder.
    """
    from sparkrag.schemas import require_columns
    from sparkrag.index.shards import make_collection_fn
    from sparkrag.index.vectorstore import WRITE_COLUMNS, open_client, open_collection, partition_payload, upsert_chunks

    if cfg.mode != "server":
        raise ConfigError(f"chroma.mode: executor writes need 'server', got {cfg.mode!r} "
                          "(embedded directories take one writer: load them on the driver)")
    require_columns(df.schema, WRITE_COLUMNS, where="write_partitions_to_server")
    open_collection(open_client(cfg, backoff_s=backoff_s), cfg, embedding_model=embedding_model, dim=dim, create=True)
    make_collection = make_collection_fn(cfg, embedding_model=embedding_model, dim=dim, backoff_s=backoff_s)

    def write(batches: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        collection = make_collection()
        written = 0
        for pdf in batches:
            if len(pdf):
                ids, vectors, docs, metas = partition_payload(pdf, dim)
                written += int(upsert_chunks(collection, ids, vectors, docs, metas, batch_size=cfg.batch_size,
                                             replace=replace)["written"])
        yield pd.DataFrame({"written": [written]})

    rows = df.select(*WRITE_COLUMNS).mapInPandas(write, schema="written long").collect()
    total = sum(int(r["written"]) for r in rows)
    log.info("wrote %d chunks to Chroma %r at %s:%s from %d tasks", total, cfg.collection, cfg.host, cfg.port, len(rows))
    return total
