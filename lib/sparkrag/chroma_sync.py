"""Keep a Chroma collection equal to the chunks Delta table (the ingest job's last step).

The chunks table is the source of truth; Chroma is derived from it. Each chunk's
``doc_hash`` travels in its Chroma metadata, so a sync can tell a current vector from a
stale one with the same id (a document whose title or metadata changed keeps its chunk
ids). Embedded directories are written by one writer on the driver, under a lock; a
server is written by the executors in parallel.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sparkrag.config import RagConfig
from sparkrag.errors import VectorStoreError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["open_for_ingest", "sync_collection", "collection_hashes"]

log = logging.getLogger(__name__)

DOC_HASH_KEY = "doc_hash"


def open_for_ingest(cfg: RagConfig, *, embedding_model: str, dim: int, full_refresh: bool) -> None:
    """Check (or, on full refresh, recreate) the collection before any work is done.

    Raises:
        VectorStoreError: the collection was built with another encoder/dimension/space
            (the message says what is stored and suggests ``--full-refresh``).
    """
    from sparkrag.vectorstore import open_client, open_collection

    client = open_client(cfg.chroma)
    if full_refresh:
        try:
            client.delete_collection(cfg.chroma.collection)
            log.info("full refresh: dropped Chroma collection %r", cfg.chroma.collection)
        except Exception:  # chromadb raises NotFoundError/ValueError by version: absent is fine
            pass
    open_collection(client, cfg.chroma, embedding_model=embedding_model, dim=dim, create=True)


def collection_hashes(collection: Any, *, page_size: int = 5000) -> dict[str, str | None]:
    """chunk_id -> doc_hash of every vector in the collection (paged)."""
    out: dict[str, str | None] = {}
    offset = 0
    while True:
        page = collection.get(include=["metadatas"], limit=page_size, offset=offset)
        for cid, meta in zip(page["ids"], page["metadatas"] or [None] * len(page["ids"])):
            out[cid] = (meta or {}).get(DOC_HASH_KEY)
        if len(page["ids"]) < page_size:
            return out
        offset += page_size


def sync_collection(chunks: "DataFrame | None", cfg: RagConfig, *, embedding_model: str, dim: int,
                    progress_every: int = 5000) -> dict[str, int]:
    """Delete what the table no longer has, (re)load what Chroma lacks, then verify.

    Returns:
        ``{"deleted", "loaded", "total"}`` counts of chunk vectors.

    Raises:
        VectorStoreError: after the load, Chroma's ids differ from the table's.
    """
    import contextlib

    from sparkrag.vectorstore import embedded_writer, open_client, open_collection

    embedded = cfg.chroma.mode == "embedded"
    ctx = embedded_writer(cfg.chroma) if embedded else contextlib.nullcontext(open_client(cfg.chroma))
    with ctx as client:
        collection = open_collection(client, cfg.chroma, embedding_model=embedding_model, dim=dim, create=True)
        desired = _table_hashes(chunks)
        actual = collection_hashes(collection)
        to_delete = sorted(set(actual) - set(desired))
        to_load = sorted(cid for cid, h in desired.items() if actual.get(cid, "\0missing") != h)
        # Ids held with another doc_hash are deleted here with the vanished ones, so every id
        # loaded below is absent and the load skips a per-batch lookup (add ignores ids that exist).
        outdated = [cid for cid in to_load if cid in actual]
        log.info("Chroma %r: %d vectors, table %d chunks -> delete %d, load %d (%d replaced)",
                 cfg.chroma.collection, len(actual), len(desired), len(to_delete), len(to_load), len(outdated))
        if to_delete or outdated:
            from sparkrag.vectorstore import delete_chunks

            delete_chunks(collection, to_delete + outdated, batch_size=cfg.chroma.batch_size)
        if to_load:
            rows = _rows_for(chunks, to_load if len(to_load) < len(desired) else None)
            if embedded:
                _load_on_driver(collection, rows, cfg, total=len(to_load), progress_every=progress_every)
            else:
                from sparkrag.vectorstore import write_partitions_to_server

                write_partitions_to_server(rows, cfg.chroma, embedding_model=embedding_model, dim=dim,
                                           replace=False)
        _verify(collection, set(desired))
        return {"deleted": len(to_delete), "loaded": len(to_load), "total": len(desired)}


def _table_hashes(chunks: "DataFrame | None") -> dict[str, str]:
    if chunks is None:
        return {}
    table = chunks.select("chunk_id", "doc_hash").toArrow()
    return dict(zip(table.column("chunk_id").to_pylist(), table.column("doc_hash").to_pylist()))


def _rows_for(chunks: "DataFrame", ids: list[str] | None) -> "DataFrame":
    """The chunk rows to load (``ids``; None: all), with doc_hash folded into the metadata Chroma stores."""
    from pyspark.sql import functions as F

    if ids is not None:
        wanted = chunks.sparkSession.createDataFrame([(i,) for i in ids], "chunk_id string")
        chunks = chunks.join(wanted, "chunk_id", "left_semi")
    meta = F.map_concat(F.coalesce(F.col("metadata"), F.create_map().cast("map<string,string>")),
                        F.create_map(F.lit(DOC_HASH_KEY), F.col("doc_hash")))
    return chunks.select("chunk_id", "embedding", "text", "doc_id", "chunk_index", "title", meta.alias("metadata"))


def _load_on_driver(collection: Any, rows: "DataFrame", cfg: RagConfig, *, total: int, progress_every: int) -> None:
    """The single embedded writer: stream rows to the driver and add them in max-size batches."""
    from sparkrag.vectorstore import _max_batch, to_chroma_metadata, upsert_chunks

    size = _max_batch(collection, cfg.chroma.batch_size)
    batch: list[Any] = []
    done, start, next_report = 0, time.perf_counter(), progress_every

    def flush() -> None:
        nonlocal done, next_report
        upsert_chunks(collection, [r["chunk_id"] for r in batch], [r["embedding"] for r in batch],
                      [r["text"] for r in batch],
                      [to_chroma_metadata(r["doc_id"], r["chunk_index"], r["title"], r["metadata"]) for r in batch],
                      batch_size=size, replace=False)  # sync_collection deleted every id it loads
        done += len(batch)
        if done >= next_report or done == total:
            rate = done / max(time.perf_counter() - start, 1e-9)
            log.info("Chroma load: %d/%d chunks (%.0f/s)", done, total, rate)
            next_report = done + progress_every
        batch.clear()

    for row in rows.toLocalIterator(prefetchPartitions=True):
        batch.append(row)
        if len(batch) >= size:
            flush()
    if batch:
        flush()


def _verify(collection: Any, expected: set[str]) -> None:
    from sparkrag.vectorstore import verify_collection

    try:
        verify_collection(collection, expected)
    except VectorStoreError as exc:
        raise VectorStoreError(f"after the load, {exc}") from exc
