"""Reading a sharded Chroma index: resolve its shards, ship them to executors, query them as one.

:class:`ShardedIndex` answers ``query`` and ``get`` like a Chroma ``Collection``: every
shard is queried (in parallel threads, with the same ``where`` and ``where_document``),
and the per-shard top-k lists are merged into the global top-k by distance, which is
exactly a single index's answer when all shards use the same distance (each shard
returns its own k nearest, and the global k nearest are among them). Post-query filters
run after the merge, in :mod:`sparkrag.retrieval.search`. A one-shard index is simply its
collection. A shard with a delta directory (:mod:`sparkrag.index.build`) is a
:class:`SegmentedShard`: its base and its delta queried as one, the base's hidden ids
skipped.

Example:
    >>> index_fn = prepare_index_fn(spark, cfg.chroma, embedding_model=model, dim=384)  # doctest: +SKIP
    >>> index_fn().query(query_embeddings=q, n_results=10)  # on an executor  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tarfile
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np

from sparkrag.config import ChromaConfig
from sparkrag.errors import ConfigError, VectorStoreError
from sparkrag.models import worker_cached
from sparkrag.index.layout import is_legacy_directory, open_store, server_shard_names
from sparkrag.index.segments import QUERY_KEYS, SegmentedShard
from sparkrag.spark import ship_archive, ships_copies
from sparkrag.index.vectorstore import (
    _LOCK_FILE,
    _exclusive_lock,
    _settings,
    check_collection,
    open_client,
    open_collection,
    persistent_client,
)

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection
    from pyspark.sql import SparkSession

__all__ = [
    "ShardRef",
    "ShardedIndex",
    "SegmentedShard",
    "resolve_shards",
    "open_index",
    "prepare_index_fn",
    "prepare_shard_refs",
    "open_shard_alone",
    "make_index_fn",
    "snapshot_for_executors",
    "open_snapshot_collection",
    "make_collection_fn",
]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ShardRef:
    """One shard: an embedded persist directory (``path``) or a server collection (``path`` None)."""

    collection: str
    path: str | None = None
    snapshot: str | None = None  # archive name shipped with addArchive, when executors read a copy
    delta: str | None = None  # the shard's delta directory (embedded), read over ``path``
    delta_snapshot: str | None = None  # its archive name, when executors read copies


def _server_shard_count(cfg: ChromaConfig) -> int:
    if cfg.shards is not None:
        return cfg.shards
    names = {c if isinstance(c, str) else c.name for c in open_client(cfg).list_collections()}
    if cfg.collection in names:
        return 1
    numbered = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(rf"{re.escape(cfg.collection)}-s(\d+)", n)))
    if not numbered:
        raise VectorStoreError(f"collection {cfg.collection!r} does not exist on server {cfg.host}:{cfg.port}; "
                               "run the ingest job first")
    if numbered != list(range(len(numbered))):
        raise VectorStoreError(f"server {cfg.host}:{cfg.port}: shards of {cfg.collection!r} are not 0..N-1: "
                               f"{numbered}; rerun the ingest job with --full-refresh")
    return len(numbered)


def resolve_shards(cfg: ChromaConfig, spark: "SparkSession | None" = None) -> tuple[ShardRef, ...]:
    """The shards of ``cfg.collection`` as published now (resolve once per job: later publishes are not seen).

    Embedded: the manifest's directories, or ``cfg.path`` itself for the pre-shard layout.
    Server: ``collection`` or ``collection-s0..N-1``.

    Raises:
        VectorStoreError: nothing has been published at ``cfg.path``.
    """
    if cfg.mode == "server":
        return tuple(ShardRef(name) for name in server_shard_names(cfg.collection, _server_shard_count(cfg)))
    store = open_store(cfg, spark)
    manifest = store.read_manifest()
    if manifest is not None:
        return tuple(ShardRef(cfg.collection, store.full_path(d), delta=store.full_path(x) if x else None)
                     for d, x in zip(manifest.dirs, (manifest.delta(i) for i in range(manifest.shards))))
    if is_legacy_directory(cfg.path):
        return (ShardRef(cfg.collection, os.path.abspath(cfg.path)),)  # tasks have another working dir
    raise VectorStoreError(f"no Chroma index of {cfg.collection!r} in {cfg.path} (chroma.path); "
                           "run the ingest job first")


class ShardedIndex:
    """Several Chroma collections queried as one (``query``, ``get``, ``count``, ``metadata``).

    Example:
        >>> index = ShardedIndex([shard0, shard1])  # doctest: +SKIP
        >>> index.query(query_embeddings=q, n_results=5, where={"source": "wiki"})["ids"]  # doctest: +SKIP
    """

    def __init__(self, collections: Sequence[Any], *, threads: int | None = None) -> None:
        if not collections:
            raise VectorStoreError("ShardedIndex: expected at least one shard, got none")
        self.shards = list(collections)
        self.name = getattr(self.shards[0], "name", "sharded")
        self.metadata = {**dict(self.shards[0].metadata or {}), "shards": len(self.shards)}
        self._pool = ThreadPoolExecutor(max_workers=threads or min(len(self.shards), 8),
                                        thread_name_prefix="sparkrag-shard")

    def count(self) -> int:
        """Vectors in all shards."""
        return sum(int(s.count()) for s in self.shards)

    def _each(self, call: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
        return list(self._pool.map(call, self.shards))

    def query(self, query_embeddings: Any, n_results: int = 10, where: Any = None, where_document: Any = None,
              include: Sequence[str] = ("documents", "metadatas", "distances")) -> dict[str, Any]:
        """Like ``Collection.query``: the global ``n_results`` nearest per query, merged by distance.

        Two phases: ids and distances from every shard (in parallel), merged; then the
        documents, metadata and embeddings of the winners only, fetched by id from their
        shards. Fetching them with every shard's query would read N x k rows instead of k
        (about 3x the cost of the search itself on Chroma 1.5).
        """
        q = np.asarray(query_embeddings, dtype=np.float32)
        q = q.reshape(1, -1) if q.ndim == 1 else q
        wanted = [k for k in include if k in QUERY_KEYS and k != "ids"]
        parts = self._each(lambda s: s.query(query_embeddings=q, n_results=n_results, where=where,
                                             where_document=where_document, include=["distances"]))
        top: list[list[tuple[float, int, str]]] = []
        for j in range(len(q)):
            rows = [(float(d), s, part["ids"][j][r]) for s, part in enumerate(parts)
                    for r, d in enumerate(part["distances"][j])]
            rows.sort(key=lambda t: (t[0], t[1]))  # stable: equal distances keep shard order, then rank
            top.append(rows[:n_results])
        fields = [k for k in wanted if k != "distances"]
        rows_by_id = self._fetch(top, fields) if fields else {}
        out: dict[str, Any] = {"ids": [], **{k: [] for k in wanted}}
        for hits in top:
            hits = [h for h in hits if not fields or h[2] in rows_by_id]  # gone between phases (server writes)
            out["ids"].append([h[2] for h in hits])
            if "distances" in wanted:
                out["distances"].append([h[0] for h in hits])
            for key in fields:
                values = [rows_by_id[h[2]][key] for h in hits]
                out[key].append(np.asarray(values) if key == "embeddings" and values else values)
        out["included"] = wanted
        return out

    def _fetch(self, top: list[list[tuple[float, int, str]]], fields: list[str]) -> dict[str, dict[str, Any]]:
        """id -> {field: value} of every winner, one ``get`` per shard holding any (in parallel)."""
        per_shard: list[set[str]] = [set() for _ in self.shards]
        for hits in top:
            for _, s, cid in hits:
                per_shard[s].add(cid)
        got = list(self._pool.map(lambda s: self.shards[s].get(ids=sorted(per_shard[s]), include=fields)
                                  if per_shard[s] else None, range(len(self.shards))))
        out: dict[str, dict[str, Any]] = {}
        for res in got:
            if res is None:
                continue
            for k, cid in enumerate(res["ids"]):
                out[cid] = {key: res[key][k] for key in fields}
        return out

    def get(self, ids: Sequence[str] | None = None, include: Sequence[str] = ("documents", "metadatas"),
            where: Any = None, where_document: Any = None, limit: int | None = None) -> dict[str, Any]:
        """Like ``Collection.get``: the rows of ``ids`` (or matching the filters) found in any shard, unordered."""
        wanted = [k for k in include if k in ("embeddings", "documents", "metadatas")]
        ids = None if ids is None else [str(i) for i in ids]
        parts = self._each(lambda s: s.get(ids=ids, where=where, where_document=where_document, include=wanted,
                                           limit=limit))
        out: dict[str, Any] = {"ids": [i for p in parts for i in p["ids"]]}
        for key in wanted:
            values = [v for p in parts for v in (p[key] if p[key] is not None else [])]
            out[key] = np.asarray(values) if key == "embeddings" and values else values
        if limit is not None:
            out = {k: v[:limit] for k, v in out.items()}
        out["included"] = wanted
        return out


def _get_collection(client: Any, ref: ShardRef, where: str) -> "Collection":
    from chromadb.errors import NotFoundError

    try:
        return client.get_collection(ref.collection, embedding_function=None)
    except NotFoundError:
        raise VectorStoreError(f"shard {ref.collection!r} does not exist in {where}") from None


def _open_delta(base: "Collection", ref: ShardRef) -> Any:
    """``base`` alone, or with ``ref``'s delta a :class:`SegmentedShard` (snapshot copies opened once per worker)."""
    from sparkrag.index.build import read_masked

    if ref.delta_snapshot is not None:
        delta, local = worker_cached(("chroma-snapshot", ref.delta_snapshot, ref.collection),
                                     lambda: _open_snapshot(ref.delta_snapshot, ref.collection))
        return SegmentedShard(base, delta, read_masked(local))
    if ref.delta is not None:
        return SegmentedShard(base, _get_collection(persistent_client(ref.delta), ref, ref.delta),
                              read_masked(ref.delta))
    return base


def _open_shard(ref: ShardRef, cfg: ChromaConfig, backoff_s: float) -> Any:
    if ref.snapshot is not None:
        return _open_delta(open_snapshot_collection(ref.snapshot, ref.collection), ref)
    client = persistent_client(ref.path) if ref.path is not None else open_client(cfg, backoff_s=backoff_s)
    return _open_delta(_get_collection(client, ref, ref.path or f"server {cfg.host}:{cfg.port}"), ref)


def open_index(cfg: ChromaConfig, refs: Sequence[ShardRef], *, backoff_s: float = 0.5) -> Any:
    """The collection of a one-shard index, else a :class:`ShardedIndex` over ``refs``."""
    collections = [_open_shard(ref, cfg, backoff_s) for ref in refs]
    return collections[0] if len(collections) == 1 else ShardedIndex(collections)


def make_index_fn(cfg: ChromaConfig, refs: Sequence[ShardRef], *, embedding_model: str | None = None,
                  dim: int | None = None, backoff_s: float = 0.5) -> Callable[[], Any]:
    """A zero-argument, picklable factory of the index over ``refs``, built once per worker.

    With ``embedding_model`` and ``dim`` every shard is checked against them.
    """
    refs = tuple(refs)

    def load() -> Any:
        def build() -> Any:
            index = open_index(cfg, refs, backoff_s=backoff_s)
            if embedding_model is not None and dim is not None:
                for shard in getattr(index, "shards", [index]):
                    check_collection(shard, cfg, embedding_model, dim)
            return index

        return worker_cached(("chroma-index", cfg.mode, cfg.host, cfg.port, refs), build)

    return load


def prepare_index_fn(spark: "SparkSession", cfg: ChromaConfig, *, embedding_model: str, dim: int,
                     access: Literal["auto", "snapshot", "shared"] = "auto") -> Callable[[], Any]:
    """On the driver: resolve the shards once, check them, ship snapshots if asked; the executor factory.

    ``access`` (embedded only): ``shared`` opens the published directories in place (local
    mode, a shared disk); ``snapshot`` ships a copy of each shard with ``addArchive``;
    ``auto`` is shared on local masters, snapshot elsewhere.

    Raises:
        VectorStoreError: nothing published, or a shard built for another encoder.
    """
    refs = prepare_shard_refs(spark, cfg, embedding_model=embedding_model, dim=dim, access=access)
    return make_index_fn(cfg, refs, embedding_model=embedding_model, dim=dim)


def prepare_shard_refs(spark: "SparkSession", cfg: ChromaConfig, *, embedding_model: str, dim: int,
                       access: Literal["auto", "snapshot", "shared"] = "auto") -> tuple[ShardRef, ...]:
    """The checked (and, with snapshots, shipped) shards of :func:`prepare_index_fn`, one ref each."""
    refs = resolve_shards(cfg, spark)
    if cfg.mode == "embedded" and not os.path.isdir(refs[0].path or ""):  # a Hadoop store: copy here, then ship
        refs, access = _download(spark, cfg), "snapshot"
    for ref in refs:  # fail here, before any task starts; applies a changed hnsw_search_ef
        for path in (ref.path, ref.delta) if ref.delta else (ref.path,):
            client = persistent_client(path) if path is not None else open_client(cfg)
            open_collection(client, _named(cfg, ref.collection), embedding_model=embedding_model, dim=dim,
                            create=False)
    if cfg.mode == "embedded" and ships_copies(spark, access):
        refs = tuple(dataclasses.replace(
            r, snapshot=snapshot_for_executors(spark, cfg, directory=r.path),
            delta_snapshot=snapshot_for_executors(spark, cfg, directory=r.delta) if r.delta else None) for r in refs)
    log.info("Chroma index %r: %d shard(s) (%s)", cfg.collection, len(refs),
             "snapshots" if refs[0].snapshot else cfg.mode)
    return refs


def _download(spark: "SparkSession", cfg: ChromaConfig) -> tuple[ShardRef, ...]:
    """Copies of a Hadoop store's published shards in local directories of the driver."""
    store = open_store(cfg, spark)
    manifest = store.read_manifest()
    if manifest is None:
        raise VectorStoreError(f"no Chroma index of {cfg.collection!r} in {cfg.path}; run the ingest job first")
    def download(rel: str) -> str | None:
        if not rel:
            return None
        local = tempfile.mkdtemp(prefix="sparkrag-shard-download-")
        store.fetch(rel, local)
        return local

    return tuple(ShardRef(cfg.collection, download(rel), delta=download(manifest.delta(i)))
                 for i, rel in enumerate(manifest.dirs))


def _named(cfg: ChromaConfig, collection: str) -> ChromaConfig:
    return dataclasses.replace(cfg, collection=collection)


# ---- snapshots: a tar.gz copy of a persist directory shipped to every executor ----

def snapshot_for_executors(spark: "SparkSession", cfg: ChromaConfig, *, directory: str | None = None) -> str:
    """Ship a tar.gz copy of an embedded persist directory to every executor (``addArchive``).

    ``directory`` defaults to ``cfg.path`` (the pre-shard layout, locked while it is read);
    published shard directories are never written, so they are read without a lock.

    Returns:
        The archive name to pass to :func:`open_snapshot_collection` on executors.

    Raises:
        ConfigError: ``cfg.mode`` is not ``embedded``.
        VectorStoreError: the directory holds no Chroma database, or a writer holds it.
    """
    if cfg.mode != "embedded":
        raise ConfigError(f"chroma.mode: snapshots are for 'embedded', got {cfg.mode!r}")
    src = directory or cfg.path
    if not os.path.isfile(os.path.join(src, "chroma.sqlite3")):
        raise VectorStoreError(f"no Chroma database in {src} (chroma.path); run the ingest job first")
    name = f"chroma-{cfg.collection}-{uuid.uuid4().hex[:12]}.tar.gz"
    archive = os.path.join(tempfile.mkdtemp(prefix="sparkrag-snapshot-"), name)
    lock = _exclusive_lock(src, purpose="snapshot") if directory is None else contextlib.nullcontext()
    with lock, tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".", filter=lambda info: None if info.name.endswith(_LOCK_FILE) else info)
    ship_archive(spark, archive)
    log.info("shipped Chroma snapshot %s (%.1f MB) to executors", name, os.path.getsize(archive) / 1e6)
    return name


def open_snapshot_collection(name: str, collection_name: str) -> "Collection":
    """On an executor: the collection inside snapshot ``name``, opened once per worker.

    Opening writes to the SQLite file, so each worker opens its own writable copy (a shared
    or read-only one fails or races).

    Raises:
        VectorStoreError: the snapshot is not present on this executor.
    """
    return worker_cached(("chroma-snapshot", name, collection_name), lambda: _open_snapshot(name, collection_name))[0]


def _open_snapshot(name: str, collection_name: str) -> tuple["Collection", str]:
    """The collection in a private copy of snapshot ``name`` (removed at exit), and that copy's folder."""
    import atexit

    client, local = _snapshot_client(name)
    atexit.register(shutil.rmtree, local, True)
    return client.get_collection(collection_name, embedding_function=None), local


def _snapshot_client(name: str) -> tuple[Any, str]:
    """A client on a private, writable copy of snapshot ``name``, and that copy's folder."""
    import chromadb
    from pyspark import SparkFiles

    src = SparkFiles.get(name)
    if not os.path.exists(src):
        raise VectorStoreError(f"Chroma snapshot {name!r} not found at {src}; "
                               "call snapshot_for_executors in this Spark application first")
    local = tempfile.mkdtemp(prefix="sparkrag-chroma-")
    if os.path.isdir(src):
        shutil.copytree(src, local, dirs_exist_ok=True)
    else:  # shipped with addFile: still an archive
        with tarfile.open(src) as tar:
            tar.extractall(local, filter="data")
    return chromadb.PersistentClient(path=local, settings=_settings()), local


def open_shard_alone(cfg: ChromaConfig, ref: ShardRef, *, embedding_model: str, dim: int) -> "Collection":
    """On a worker: shard ``ref``'s collection, closing the shard this worker held before (partitioned access).

    The worker keeps one shard open at a time (:func:`~sparkrag.models.worker_slot`): its
    memory holds the shard its current task searches, not every shard it ever touched.
    """
    from sparkrag.models import worker_slot

    def open_dir(path: str | None, snapshot: str | None) -> tuple[Any, Any, str | None]:
        local = None
        if snapshot is not None:
            client, local = _snapshot_client(snapshot)
        elif path is not None:
            client = persistent_client(path)
        else:
            client = open_client(_named(cfg, ref.collection))
        collection = client.get_collection(ref.collection, embedding_function=None)
        check_collection(collection, cfg, embedding_model, dim)
        return client, collection, local

    def open_() -> tuple[list[tuple[Any, Any, str | None]], Any]:
        from sparkrag.index.build import read_masked

        held = [open_dir(ref.path, ref.snapshot)]
        if ref.delta is None and ref.delta_snapshot is None:
            return held, held[0][1]
        held.append(open_dir(ref.delta, ref.delta_snapshot))
        return held, SegmentedShard(held[0][1], held[1][1], read_masked(held[1][2] or ref.delta))

    def close(opened: tuple[list[tuple[Any, Any, str | None]], Any]) -> None:
        for client, _, local in opened[0]:
            if cfg.mode == "embedded":
                client.close()  # stops the shard's Chroma system: its HNSW index and SQLite go
            if local is not None:
                shutil.rmtree(local, ignore_errors=True)

    return worker_slot("sparkrag.partitioned.chroma", (ref, cfg.mode, cfg.host, cfg.port), open_, close)[1]


def make_collection_fn(cfg: ChromaConfig, *, snapshot: str | None = None, embedding_model: str | None = None,
                       dim: int | None = None, backoff_s: float = 0.5) -> Callable[[], "Collection"]:
    """A zero-argument, picklable function opening one collection on a worker, once per worker.

    ``snapshot`` (see :func:`snapshot_for_executors`), else the embedded directory
    :func:`~sparkrag.index.vectorstore.open_client` resolves (read in place), else the server.
    For a sharded index use :func:`prepare_index_fn`.
    """
    if cfg.mode == "server":
        refs = (ShardRef(cfg.collection),)
    elif snapshot is not None:
        refs = (ShardRef(cfg.collection, None, snapshot),)
    else:
        refs = resolve_shards(cfg)
    return make_index_fn(cfg, refs, embedding_model=embedding_model, dim=dim, backoff_s=backoff_s)
