"""Building one shard of the Chroma index inside one Spark task (its only writer).

The driver (:func:`sparkrag.index.sync.sync_collection`) sends each changed shard's rows
of the chunks table to exactly one task. The task brings the shard in step with them by
``(chunk_id, doc_hash)``: delete ids the table no longer has or holds with another hash,
add what the shard lacks, then verify that the shard holds exactly the table's ids.

Embedded shards are built in a local staging directory (a copy of the published
version, or empty), closed, then copied to a new versioned directory next to the
manifest; nothing is published until the driver replaces the manifest. Server shards
(``{collection}-s{i}``) are written in place: one task per shard collection.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from sparkrag.config import ChromaConfig
from sparkrag.errors import VectorStoreError
from sparkrag.index.layout import ShardStore, shard_fingerprint

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ShardTask", "RESULT_SCHEMA", "build_shard", "apply_rows", "extract_archive"]

log = logging.getLogger(__name__)

RESULT_SCHEMA = ("shard int, target string, deleted long, loaded long, total long, fingerprint string, "
                 "archive binary, load_seconds double, copy_seconds double")


@dataclass(frozen=True)
class ShardTask:
    """What one task builds: ``shard``'s collection, from ``base`` (embedded, relative dir) into ``target``."""

    shard: int
    collection: str  # the collection name inside the shard directory, or on the server
    base: str | None = None  # published version to start from; None: an empty shard
    target: str | None = None  # new versioned directory (embedded); None: a server collection
    root: str | None = None  # the store's POSIX root; None: return the shard as a tar.gz (Hadoop store)


def _doc_hashes(pdf: "pd.DataFrame") -> list[str]:
    return pdf["doc_hash"].astype(str).tolist()


def apply_rows(collection: Any, batches: Iterable["pd.DataFrame"], *, shard: int, dim: int,
               batch_size: int | None) -> dict[str, Any]:
    """Make ``collection`` hold exactly the rows streamed in ``batches`` (``WRITE_COLUMNS`` + doc_hash + _shard).

    Returns:
        ``{"deleted", "loaded", "total", "fingerprint"}``.

    Raises:
        VectorStoreError: a row of another shard arrived, or the verify failed.
    """
    from sparkrag.index.vectorstore import collection_hashes
    from sparkrag.index.vectorstore import _max_batch, delete_chunks, partition_payload, upsert_chunks, verify_collection

    actual = collection_hashes(collection)
    size = _max_batch(collection, batch_size)
    seen: dict[str, str] = {}
    pending: list[tuple[list[str], np.ndarray, list[str], list[dict[str, Any]]]] = []
    counts = {"deleted": 0, "loaded": 0}

    def flush() -> None:
        ids = [i for p in pending for i in p[0]]
        if not ids:
            return
        outdated = [i for i in ids if i in actual]  # held with another doc_hash: add() would keep the old one
        if outdated:
            counts["deleted"] += delete_chunks(collection, outdated, batch_size=batch_size)
        upsert_chunks(collection, ids, np.vstack([p[1] for p in pending]), [d for p in pending for d in p[2]],
                      [m for p in pending for m in p[3]], batch_size=size, replace=False)
        counts["loaded"] += len(ids)
        pending.clear()

    for pdf in batches:
        if not len(pdf):
            continue
        if (pdf["_shard"] != shard).any():
            raise VectorStoreError(f"shard {shard}: got rows of shard(s) {sorted(set(pdf['_shard']) - {shard})}; "
                                   "one task must see exactly one shard")
        hashes = _doc_hashes(pdf)
        ids = pdf["chunk_id"].astype(str).tolist()
        seen.update(zip(ids, hashes))
        need = [k for k, (cid, h) in enumerate(zip(ids, hashes)) if actual.get(cid, "\0missing") != h]
        if need:
            pending.append(partition_payload(pdf.iloc[need], dim))
            if sum(len(p[0]) for p in pending) >= size:
                flush()
    flush()
    vanished = sorted(set(actual) - set(seen))
    if vanished:
        counts["deleted"] += delete_chunks(collection, vanished, batch_size=batch_size)
    try:
        verify_collection(collection, set(seen))
    except VectorStoreError as exc:
        raise VectorStoreError(f"shard {shard}: after the load, {exc}") from exc
    return {**counts, "total": len(seen), "fingerprint": shard_fingerprint(seen)}


def _tar_bytes(directory: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return buf.getvalue()


def build_shard(task: ShardTask, batches: Iterable["pd.DataFrame"], cfg: ChromaConfig, *, embedding_model: str,
                dim: int) -> dict[str, Any]:
    """Build ``task``'s shard from ``batches``; embedded: in local staging, then copied to ``task.target``.

    Returns:
        One result row (see ``RESULT_SCHEMA``); ``archive`` holds the shard as tar.gz when
        ``task.root`` is None (the driver uploads it), else None.
    """
    from sparkrag.index.vectorstore import open_client, open_collection, persistent_client

    named = dataclasses.replace(cfg, collection=task.collection)
    result: dict[str, Any] = {"shard": task.shard, "target": task.target, "archive": None, "copy_seconds": 0.0}
    if task.target is None:  # server: one task writes this shard's collection in place
        start = time.perf_counter()
        collection = open_collection(open_client(named), named, embedding_model=embedding_model, dim=dim, create=True)
        result.update(apply_rows(collection, batches, shard=task.shard, dim=dim, batch_size=cfg.batch_size))
        return {**result, "load_seconds": time.perf_counter() - start}
    staging = tempfile.mkdtemp(prefix=f"sparkrag-shard{task.shard:03d}-")
    try:
        start = time.perf_counter()
        if task.base is not None:
            ShardStore(task.root or "", task.collection).fetch(task.base, staging)
        copied = time.perf_counter()
        client = persistent_client(staging)
        try:
            collection = open_collection(client, dataclasses.replace(named, path=staging),
                                         embedding_model=embedding_model, dim=dim, create=True)
            result.update(apply_rows(collection, batches, shard=task.shard, dim=dim, batch_size=cfg.batch_size))
        finally:
            client.close()  # flushes and releases the SQLite files before they are copied
        loaded = time.perf_counter()
        # A retried or speculative attempt must not collide with a directory an earlier attempt left.
        result["target"] = f"{task.target}-{uuid.uuid4().hex[:4]}"
        if task.root is None:
            result["archive"] = _tar_bytes(staging)
        else:
            ShardStore(task.root, task.collection).put(staging, result["target"])
        result.update(load_seconds=loaded - copied, copy_seconds=(copied - start) + (time.perf_counter() - loaded))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("shard %d: %d vectors (%d loaded, %d deleted) -> %s", task.shard, result["total"], result["loaded"],
             result["deleted"], result["target"])
    return result


def extract_archive(archive: bytes) -> str:
    """A local directory holding a shard returned as tar.gz (Hadoop stores); the caller removes it."""
    local = tempfile.mkdtemp(prefix="sparkrag-shard-upload-")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(local, filter="data")
    return local
