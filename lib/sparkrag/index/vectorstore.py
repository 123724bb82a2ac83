"""ChromaDB clients, collections checked against the encoder, bulk writes.

Two deployments:

* **embedded** (``ChromaConfig.mode="embedded"``): persist directories on disk. The
  ingest job writes a sharded, versioned layout under ``cfg.path`` (see
  :mod:`sparkrag.index.layout`); :func:`open_client` resolves a one-shard index to its
  published directory, and an unversioned ``cfg.path`` (the pre-shard layout) to itself.
  :func:`embedded_writer` holds an exclusive lock, because two processes writing one
  directory corrupt it silently.
* **server** (``mode="server"``): a ``chroma run`` server, one collection per shard.

Reading a (sharded) index on executors lives in :mod:`sparkrag.index.shards`; loading it in
:mod:`sparkrag.index.sync`. chromadb is imported only inside functions.

Example:
    >>> with embedded_writer(cfg) as client:  # doctest: +SKIP
    ...     col = open_collection(client, cfg, embedding_model="all-MiniLM-L6-v2", dim=384, create=True)
    ...     upsert_chunks(col, ids, vectors, texts, metas)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from sparkrag.config import ChromaConfig
from sparkrag.errors import ConfigError, SchemaError, VectorStoreError
from sparkrag.index.layout import check_stored_encoder, open_store

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = [
    "RESERVED_METADATA_KEYS",
    "open_client",
    "persistent_client",
    "resolve_embedded_path",
    "embedded_writer",
    "open_collection",
    "check_collection",
    "to_chroma_metadata",
    "upsert_chunks",
    "delete_chunks",
    "collection_ids",
    "verify_collection",
    "partition_payload",
    "DOC_HASH_KEY",
    "collection_hashes",
]

log = logging.getLogger(__name__)

RESERVED_METADATA_KEYS = ("doc_id", "chunk_index", "title")
DOC_HASH_KEY = "doc_hash"  # the metadata key that keeps each vector in step with its chunk row
_LOCK_FILE = ".sparkrag-writer.lock"
WRITE_COLUMNS = {
    "chunk_id": "Chroma id",
    "embedding": "the vector",
    "text": "Chroma document",
    "doc_id": "metadata doc_id",
    "chunk_index": "metadata chunk_index",
    "title": "metadata title",
    "metadata": "user metadata",
}


def _settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def persistent_client(path: str) -> "ClientAPI":
    """An embedded client on exactly ``path`` (telemetry off); see :func:`open_client` for resolution."""
    import chromadb

    return chromadb.PersistentClient(path=path, settings=_settings())


def resolve_embedded_path(cfg: ChromaConfig) -> str:
    """The persist directory holding ``cfg.collection``: the published shard of a one-shard index, else ``cfg.path``.

    Raises:
        VectorStoreError: the index has several shards, or a delta (open it with ``sparkrag.index.shards``).
    """
    manifest = open_store(cfg).read_manifest() if "://" not in cfg.path else None
    if manifest is None:
        return cfg.path
    if manifest.shards != 1 or manifest.delta(0):
        what = f"{manifest.shards} shards" if manifest.shards != 1 else "a delta over its shard"
        raise VectorStoreError(f"collection {cfg.collection!r} in {cfg.path} has {what}; "
                               "open it with sparkrag.index.shards.open_index, not one client")
    return open_store(cfg).full_path(manifest.dirs[0])


def open_client(cfg: ChromaConfig, *, backoff_s: float = 0.5) -> "ClientAPI":
    """A Chroma client: embedded on :func:`resolve_embedded_path`, or ``HttpClient(cfg.host, cfg.port)``.

    Args:
        cfg: the collection config; ``mode`` picks the client.
        backoff_s: first wait between server connection attempts, doubled after each.

    Returns:
        The client (telemetry off).

    Raises:
        VectorStoreError: the server did not answer a heartbeat after
            ``1 + cfg.connect_retries`` attempts; the message names host and port.

    Example:
        >>> client = open_client(ChromaConfig(mode="server", port=8000))  # doctest: +SKIP
    """
    import chromadb

    if cfg.mode == "embedded":
        return persistent_client(resolve_embedded_path(cfg))
    attempts = 1 + max(0, cfg.connect_retries)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client = chromadb.HttpClient(host=cfg.host, port=cfg.port, settings=_settings())
            client.heartbeat()
            return client
        except Exception as exc:  # chromadb raises ValueError, httpx errors...: all mean "unreachable"
            last = exc
            if attempt + 1 < attempts:
                delay = backoff_s * 2**attempt
                log.warning("Chroma server %s:%s unreachable (attempt %d/%d), retrying in %.2fs",
                            cfg.host, cfg.port, attempt + 1, attempts, delay)
                time.sleep(delay)
    raise VectorStoreError(
        f"cannot reach the Chroma server at {cfg.host}:{cfg.port} after {attempts} attempts ({last}); "
        f"is `chroma run --host {cfg.host} --port {cfg.port}` running?"
    ) from last


@contextlib.contextmanager
def embedded_writer(cfg: ChromaConfig) -> Iterator["ClientAPI"]:
    """An embedded client holding an exclusive lock on ``cfg.path`` while it writes.

    Two processes writing one persist directory corrupt it silently (counts look right,
    vectors go missing), so every direct embedded write goes through here. A versioned
    (sharded) index is written only by :func:`sparkrag.index.sync.sync_collection`.

    Raises:
        ConfigError: ``cfg.mode`` is not ``embedded``.
        VectorStoreError: another process holds the lock, or ``cfg.path`` holds a versioned index.
    """
    if cfg.mode != "embedded":
        raise ConfigError(f"chroma.mode: embedded_writer needs 'embedded', got {cfg.mode!r}")
    if open_store(cfg).read_manifest() is not None:
        raise VectorStoreError(f"{cfg.path} holds a versioned index of {cfg.collection!r}: its published "
                               "shards are never written in place; load it with the ingest job")
    with _exclusive_lock(cfg.path, purpose="write"):
        yield persistent_client(cfg.path)


@contextlib.contextmanager
def _exclusive_lock(path: str, *, purpose: str) -> Iterator[None]:
    import fcntl

    os.makedirs(path, exist_ok=True)
    fh = open(os.path.join(path, _LOCK_FILE), "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VectorStoreError(
                f"cannot {purpose} Chroma directory {path}: another process is writing it "
                f"(lock {_LOCK_FILE}); two writers corrupt a collection silently"
            ) from None
        yield
    finally:
        fh.close()  # closing releases the flock


def _hnsw_config(collection: "Collection") -> dict[str, Any]:
    # embedding_function=None is stored as a "legacy" function config and every read of
    # `configuration` warns about it; we never embed inside Chroma, so the warning is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "legacy embedding function config", DeprecationWarning)
        conf = collection.configuration or {}
    return dict(conf.get("hnsw") or {}) if isinstance(conf, Mapping) else {}


def _stored_space(collection: "Collection") -> str | None:
    return _hnsw_config(collection).get("space") or (collection.metadata or {}).get("space")


def check_collection(collection: "Collection", cfg: ChromaConfig, embedding_model: str, dim: int) -> None:
    """Raise VectorStoreError when ``collection`` was built for another encoder, dimension or space."""
    meta = collection.metadata or {}
    check_stored_encoder({"embedding_model": meta.get("embedding_model"), "embedding_dim": meta.get("embedding_dim"),
                          "space": _stored_space(collection)}, cfg, embedding_model, dim)


def open_collection(client: "ClientAPI", cfg: ChromaConfig, *, embedding_model: str, dim: int,
                    create: bool) -> "Collection":
    """Get (or create) ``cfg.collection``, refusing one built for another encoder or space.

    New collections get ``configuration={"hnsw": {...}}`` from ``cfg`` and metadata
    ``embedding_model``, ``embedding_dim``, ``space``. On an existing one a different
    ``hnsw_search_ef`` is applied with ``modify`` (it is read when a process loads the index).

    Raises:
        VectorStoreError: missing and ``create`` is false, or stored model/dim/space differ.
    """
    from chromadb.errors import NotFoundError

    try:
        collection = client.get_collection(cfg.collection, embedding_function=None)
    except NotFoundError:
        if not create:
            raise VectorStoreError(
                f"collection {cfg.collection!r} does not exist in {_where(cfg)}; run the ingest job first"
            ) from None
        # Only the new-style configuration: old `hnsw:*` metadata keys would silently win.
        hnsw = {"space": cfg.space, "ef_construction": cfg.hnsw_construction_ef,
                "max_neighbors": cfg.hnsw_max_neighbors, "ef_search": cfg.hnsw_search_ef}
        meta = {"embedding_model": embedding_model, "embedding_dim": int(dim), "space": cfg.space}
        collection = client.get_or_create_collection(cfg.collection, configuration={"hnsw": hnsw},
                                                     metadata=meta, embedding_function=None)
        log.info("created Chroma collection %r in %s (%s)", cfg.collection, _where(cfg), hnsw)
    check_collection(collection, cfg, embedding_model, dim)
    hnsw_now = _hnsw_config(collection)
    if hnsw_now.get("ef_search") not in (None, cfg.hnsw_search_ef):
        collection.modify(configuration={"hnsw": {"ef_search": cfg.hnsw_search_ef}})
        log.info("collection %r: ef_search %s -> %s", cfg.collection, hnsw_now.get("ef_search"), cfg.hnsw_search_ef)
    return collection


def _where(cfg: ChromaConfig) -> str:
    return cfg.path if cfg.mode == "embedded" else f"server {cfg.host}:{cfg.port}"


def to_chroma_metadata(doc_id: str, chunk_index: int, title: str | None,
                       metadata: Mapping[str, str | None] | None) -> dict[str, Any]:
    """Chroma metadata for one chunk: the reserved keys plus the user's, Nones dropped.

    Raises:
        SchemaError: a user key collides with a reserved key or is one Chroma rejects or
            drops (empty, starting with ``$`` or ``#``, or ``chroma:``).

    Example:
        >>> to_chroma_metadata("d1", 0, None, {"source": "wiki", "lang": None})
        {'doc_id': 'd1', 'chunk_index': 0, 'source': 'wiki'}
    """
    out: dict[str, Any] = {"doc_id": str(doc_id), "chunk_index": int(chunk_index)}
    if title is not None:
        out["title"] = str(title)
    for key, value in (metadata or {}).items():
        if key in RESERVED_METADATA_KEYS:
            raise SchemaError(f"metadata key {key!r} of document {doc_id!r} collides with a reserved "
                              f"Chroma metadata key ({', '.join(RESERVED_METADATA_KEYS)}); rename the column")
        if not key or key[0] in "$#" or key.startswith("chroma:"):
            raise SchemaError(f"metadata key {key!r} of document {doc_id!r}: Chroma rejects or drops keys "
                              "that are empty or start with '$', '#' or 'chroma:'; rename the column")
        if value is not None:
            out[key] = value
    return out


def _max_batch(collection: "Collection", batch_size: int | None) -> int:
    limit = collection._client.get_max_batch_size()  # no public accessor on Collection
    return max(1, min(limit, batch_size)) if batch_size else limit


def upsert_chunks(collection: "Collection", ids: Sequence[str], embeddings: Any, documents: Sequence[str],
                  metadatas: Sequence[Mapping[str, Any]], *, batch_size: int | None = None, replace: bool = True,
                  progress: Callable[[int, int, float], None] | None = None) -> dict[str, float]:
    """Write chunks in batches of at most the client's max batch size (or ``batch_size``).

    ``add`` with an id that already exists does nothing and raises nothing, so with
    ``replace`` the ids of each batch already present are deleted first, then added (faster
    than ``upsert`` and better recall). ``replace=False`` skips that lookup for ids known new.

    Args:
        progress: called after each batch with (chunks done, total, seconds elapsed).

    Returns:
        ``{"written", "replaced", "batches", "seconds", "rate"}``.

    Raises:
        SchemaError: lengths differ, ids repeat, or vectors are not a 2-D matrix.
        VectorStoreError: the vectors' dimension differs from the collection's.
    """
    ids = [str(i) for i in ids]
    vectors = np.asarray(embeddings, dtype=np.float32)
    _check_write_inputs(collection, ids, vectors, documents, metadatas)
    size = _max_batch(collection, batch_size)
    total, replaced, batches, start = len(ids), 0, 0, time.perf_counter()
    for lo in range(0, total, size):
        hi = min(lo + size, total)
        batch_ids = ids[lo:hi]
        if replace:
            existing = collection.get(ids=batch_ids, include=[])["ids"]
            if existing:
                collection.delete(ids=list(existing))
                replaced += len(existing)
        collection.add(ids=batch_ids, embeddings=vectors[lo:hi], documents=list(documents[lo:hi]),
                       metadatas=[dict(m) for m in metadatas[lo:hi]])
        batches += 1
        elapsed = time.perf_counter() - start
        log.info("Chroma %r: %d/%d chunks written (%.0f/s)", collection.name, hi, total, hi / max(elapsed, 1e-9))
        if progress is not None:
            progress(hi, total, elapsed)
    seconds = time.perf_counter() - start
    return {"written": total, "replaced": replaced, "batches": batches, "seconds": seconds,
            "rate": total / seconds if seconds > 0 else 0.0}


def _check_write_inputs(collection: "Collection", ids: list[str], vectors: np.ndarray,
                        documents: Sequence[str], metadatas: Sequence[Mapping[str, Any]]) -> None:
    n = len(ids)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise SchemaError(f"upsert_chunks: expected embeddings of shape ({n}, dim), got {vectors.shape}")
    if len(documents) != n or len(metadatas) != n:
        raise SchemaError(f"upsert_chunks: expected {n} documents and metadatas, "
                          f"got {len(documents)} and {len(metadatas)}")
    if len(set(ids)) != n:
        seen: set[str] = set()
        dupes = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        raise SchemaError(f"upsert_chunks: {len(dupes)} chunk_id(s) repeat, e.g. {dupes[:5]}")
    stored_dim = (collection.metadata or {}).get("embedding_dim")
    if stored_dim is not None and n and vectors.shape[1] != int(stored_dim):
        raise VectorStoreError(f"collection {collection.name!r}: expected vectors of dimension {stored_dim}, "
                               f"got {vectors.shape[1]}")


def delete_chunks(collection: "Collection", ids: Sequence[str], *, batch_size: int | None = None) -> int:
    """Delete ``ids`` in batches; ids that are absent are ignored. Returns how many were asked."""
    ids = [str(i) for i in ids]
    size = _max_batch(collection, batch_size)
    for lo in range(0, len(ids), size):
        collection.delete(ids=ids[lo:lo + size])
    if ids:
        log.info("Chroma %r: deleted %d chunk ids", collection.name, len(ids))
    return len(ids)


def collection_ids(collection: "Collection", *, page_size: int = 5000) -> set[str]:
    """Every id in ``collection``, read page by page with ``get(include=[])``."""
    out: set[str] = set()
    offset = 0
    while True:
        page = collection.get(include=[], limit=page_size, offset=offset)["ids"]
        out.update(page)
        if len(page) < page_size:
            return out
        offset += page_size


def verify_collection(collection: "Collection", expected_ids: set[str], *, examples: int = 5) -> dict[str, int]:
    """Check that ``collection`` holds exactly ``expected_ids``.

    Returns:
        ``{"expected", "found", "missing", "extra"}`` (missing and extra are 0 on success).

    Raises:
        VectorStoreError: with the counts of missing and extra ids and a few examples of each.
    """
    found = collection_ids(collection)
    missing, extra = sorted(set(expected_ids) - found), sorted(found - set(expected_ids))
    counts = {"expected": len(expected_ids), "found": len(found), "missing": len(missing), "extra": len(extra)}
    if missing or extra:
        raise VectorStoreError(
            f"collection {collection.name!r} disagrees with the chunks table: {len(missing)} missing "
            f"(e.g. {missing[:examples]}), {len(extra)} extra (e.g. {extra[:examples]}) of "
            f"{len(expected_ids)} expected; rerun the ingest job (--full-refresh rebuilds it)"
        )
    return counts


def partition_payload(pdf: Any, dim: int) -> tuple[list[str], np.ndarray, list[str], list[dict[str, Any]]]:
    """(ids, vectors, documents, metadatas) of a pandas batch of ``WRITE_COLUMNS``, dimensions checked."""
    ids = pdf["chunk_id"].astype(str).tolist()
    rows = pdf["embedding"].tolist()
    bad = [(cid, 0 if v is None else len(v)) for cid, v in zip(ids, rows) if v is None or len(v) != dim]
    if bad:
        raise SchemaError(f"embedding: expected dimension {dim}, got {bad[0][1]} for chunk_id {bad[0][0]!r} "
                          f"({len(bad)} such rows in this batch)")
    vectors = np.stack([np.asarray(v, dtype=np.float32) for v in rows]) if rows else np.zeros((0, dim), np.float32)
    metas = [to_chroma_metadata(d, i, None if t is None or t != t else t, dict(m) if m is not None else None)
             for d, i, t, m in zip(pdf["doc_id"], pdf["chunk_index"], pdf["title"], pdf["metadata"])]
    return ids, vectors, pdf["text"].astype(str).tolist(), metas


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
