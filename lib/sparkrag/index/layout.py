"""Where a sharded Chroma index lives: shard assignment, versioned shard directories, the manifest.

One Chroma writer loads ~700 vectors/s on about one core, and two writers on one persist
directory corrupt it silently, so the vector store is split into N shards, each with
exactly one writer. A chunk's shard is ``crc32(utf8(doc_id)) % N``: every chunk of a
document shares a shard, so an update or delete of a document touches one shard.

Embedded layout under ``chroma.path`` (one manifest per collection)::

    {path}/{collection}.manifest.json                 the published state (JSON)
    {path}/{collection}.shards/s003-g000007-1a2b3c/   one shard: a Chroma persist directory

A shard directory is never written after it is published. A build writes each changed
shard into a new directory, then publishes by replacing the manifest in one atomic step
(``os.replace``; ``FileSystem.rename`` over the Hadoop API for ``scheme://`` paths), so a
reader, which resolves the manifest once, never sees a half-built shard and a killed build
leaves the published index as it was. The directories of the previous manifest are kept
for readers still on it; older and orphaned ones are removed after each publish.

A ``chroma.path`` holding ``chroma.sqlite3`` directly and no manifest is the pre-shard
(legacy) layout: readers use it as a one-shard index; the next ingest rebuilds it into
the versioned layout from the chunks table and the old database is no longer read.

Example:
    >>> shard_of("IPod#0", 4)
    0
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from sparkrag.config import ChromaConfig
from sparkrag.errors import VectorStoreError

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession

__all__ = [
    "CHUNKS_PER_SHARD",
    "Manifest",
    "ShardStore",
    "shard_of",
    "shard_column",
    "default_shard_count",
    "server_shard_names",
    "open_store",
    "is_legacy_directory",
    "check_stored_encoder",
    "shard_fingerprint",
    "spark_hash_long",
    "partition_keys",
]

log = logging.getLogger(__name__)

# One writer loads 100k vectors in ~2.5 min; below that a split buys little load time and
# every shard adds a query per batch at answer time.
CHUNKS_PER_SHARD = 100_000
MANIFEST_FORMAT = 2  # 2: per-shard delta directories (``deltas``); format 1 (none) is still read
READABLE_FORMATS = (1, 2)


def shard_of(doc_id: str, shards: int) -> int:
    """The shard of every chunk of ``doc_id``: ``crc32(utf8(doc_id)) % shards`` (Spark's ``crc32`` agrees)."""
    return zlib.crc32(str(doc_id).encode("utf-8")) % max(1, int(shards))


def shard_column(doc_id: "Column | str", shards: int) -> "Column":
    """The Spark column equal to :func:`shard_of` of ``doc_id`` (an int)."""
    from pyspark.sql import functions as F

    col = F.col(doc_id) if isinstance(doc_id, str) else doc_id
    return (F.crc32(col.cast("string")) % F.lit(max(1, int(shards)))).cast("int")


def shard_fingerprint(pairs: Mapping[str, str | None]) -> str:
    """sha256 of a shard's sorted ``chunk_id -> doc_hash`` pairs: equal fingerprints, equal content."""
    import hashlib

    digest = hashlib.sha256()
    for cid in sorted(pairs):
        digest.update(f"{cid}\t{pairs[cid]}\n".encode("utf-8"))
    return digest.hexdigest()


def default_shard_count(n_chunks: int, parallelism: int) -> int:
    """Shards for a new index: one per ``CHUNKS_PER_SHARD`` chunks, at most one per core.

    More writers than cores load no faster, and each shard costs a query per batch.
    """
    return max(1, min(max(1, parallelism), math.ceil(max(0, n_chunks) / CHUNKS_PER_SHARD)))


def server_shard_names(collection: str, shards: int) -> list[str]:
    """Collection names of a server index: ``collection`` alone, or ``{collection}-s{i}``."""
    return [collection] if shards == 1 else [f"{collection}-s{i}" for i in range(shards)]


@dataclass(frozen=True)
class Manifest:
    """The published state of an embedded index. ``dirs`` are relative to the manifest's folder."""

    collection: str
    shards: int
    dirs: tuple[str, ...]
    fingerprints: tuple[str, ...]  # sha256 of the shard's sorted (chunk_id, doc_hash) pairs
    counts: tuple[int, ...]
    embedding_model: str
    embedding_dim: int
    space: str
    generation: int = 0
    previous: tuple[str, ...] = ()  # the dirs and deltas of the manifest this one replaced (kept for its readers)
    published_at: str = ""
    format: int = MANIFEST_FORMAT
    # Per shard: a delta directory over the base in ``dirs`` ("" none; () no shard has one).
    # A delta holds the chunks added or changed since the base was built and the ids of the
    # base it hides (:mod:`sparkrag.index.build`); readers merge the two.
    deltas: tuple[str, ...] = ()

    def delta(self, shard: int) -> str:
        """Shard ``shard``'s delta directory, or ""."""
        return self.deltas[shard] if self.deltas else ""

    def live_dirs(self) -> list[str]:
        """Every directory a reader of this manifest opens: the bases and the deltas."""
        return [*self.dirs, *(d for d in self.deltas if d)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    def kept_dirs(self) -> list[str]:
        """The directories a publish of this manifest keeps: its own and its predecessor's (for its readers)."""
        return [*self.live_dirs(), *self.previous]

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        try:
            data = json.loads(text)
            if data.get("format") not in READABLE_FORMATS:
                raise ValueError(f"format {data.get('format')!r}, this sparkrag reads {READABLE_FORMATS}")
            fields = {f.name for f in dataclasses.fields(cls)}
            data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
            manifest = cls(**data)
        except (ValueError, TypeError) as exc:
            raise VectorStoreError(f"unreadable shard manifest {where}: {exc}") from exc
        if not (len(manifest.dirs) == len(manifest.fingerprints) == len(manifest.counts) == manifest.shards):
            raise VectorStoreError(f"shard manifest {where}: expected {manifest.shards} dirs, fingerprints and "
                                   f"counts, got {len(manifest.dirs)}, {len(manifest.fingerprints)}, "
                                   f"{len(manifest.counts)}")
        if manifest.deltas and len(manifest.deltas) != manifest.shards:
            raise VectorStoreError(f"shard manifest {where}: expected {manifest.shards} deltas, got "
                                   f"{len(manifest.deltas)}")
        return manifest


def _is_hadoop_uri(path: str) -> bool:
    scheme = path.split("://", 1)[0] if "://" in path else ("dbfs" if path.startswith("dbfs:") else "")
    return bool(scheme) and scheme != "file"


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def is_legacy_directory(path: str) -> bool:
    """True when ``path`` is a pre-shard persist directory (``chroma.sqlite3`` at its root)."""
    return not _is_hadoop_uri(path) and os.path.isfile(os.path.join(_local(path), "chroma.sqlite3"))


class ShardStore:
    """Versioned shard directories and the manifest of one collection on a POSIX path.

    The path must be visible to the driver and every executor that builds a shard (local
    mode, NFS, DBFS/Unity Catalog volume mounts). Shards are built in local staging
    directories (Chroma needs a writable local disk) and copied here.
    """

    manifest_type: type[Manifest] = Manifest

    def __init__(self, root: str, collection: str) -> None:
        # Absolute here, on the driver: a task's working directory is another on a cluster.
        self.root = os.path.abspath(_local(root))
        self.collection = collection

    @property
    def location(self) -> str:
        return os.path.join(self.root, f"{self.collection}.manifest.json")

    @property
    def shards_folder(self) -> str:
        return f"{self.collection}.shards"

    def full_path(self, rel: str) -> str:
        """The absolute path of a shard directory named in the manifest."""
        return os.path.abspath(os.path.join(self.root, rel))

    def new_dir(self, shard: int, generation: int) -> str:
        """A fresh, unique directory name (relative) for ``shard`` in build ``generation``."""
        return f"{self.shards_folder}/s{shard:03d}-g{generation:06d}-{uuid.uuid4().hex[:6]}"

    def read_manifest(self) -> Manifest | None:
        if not os.path.isfile(self.location):
            return None
        with open(self.location, encoding="utf-8") as fh:
            return self.manifest_type.from_json(fh.read(), self.location)

    def put(self, local_dir: str, rel: str) -> None:
        """Copy a finished local shard to ``rel`` (via a temporary name, then one rename)."""
        final = self.full_path(rel)
        partial = f"{final}.partial-{uuid.uuid4().hex[:6]}"
        os.makedirs(os.path.dirname(final), exist_ok=True)
        shutil.copytree(local_dir, partial)
        os.rename(partial, final)

    def fetch(self, rel: str, local_dir: str) -> None:
        """Copy published shard ``rel`` into ``local_dir`` (a writable local copy)."""
        shutil.copytree(self.full_path(rel), local_dir, dirs_exist_ok=True)

    def write_manifest(self, manifest: Manifest) -> None:
        """Publish: write a temporary file, fsync it, then ``os.replace`` it over the manifest."""
        os.makedirs(self.root, exist_ok=True)
        tmp = f"{self.location}.tmp-{uuid.uuid4().hex[:6]}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(manifest.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.location)

    def collect_garbage(self, keep: Sequence[str]) -> list[str]:
        """Remove every shard directory of this collection not in ``keep``; returns the removed names."""
        folder = os.path.join(self.root, self.shards_folder)
        kept = {os.path.basename(k) for k in keep}
        removed = [n for n in (sorted(os.listdir(folder)) if os.path.isdir(folder) else []) if n not in kept]
        for name in removed:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        return removed

    def publish(self, manifest: Manifest) -> Manifest:
        """Stamp and write ``manifest``, then remove directories neither it nor its predecessor names."""
        stamped = dataclasses.replace(manifest, published_at=dt.datetime.now(dt.timezone.utc).isoformat())
        self.write_manifest(stamped)
        removed = self.collect_garbage(stamped.kept_dirs())
        log.info("published %s generation %d (%d shards); removed %d old shard directories",
                 self.location, stamped.generation, stamped.shards, len(removed))
        return stamped


class HadoopShardStore(ShardStore):
    """A :class:`ShardStore` on object storage or DBFS, through Spark's Hadoop FileSystem API.

    The JVM is reachable only from the driver, so executors build shards in local staging
    and the driver uploads them (``copyFromLocalFile``) and publishes the manifest with
    ``FileSystem.rename`` (atomic on HDFS, ABFS with hierarchical namespace and DBFS;
    on S3 a rename is a copy, but the manifest is one small object written in one PUT).
    """

    def __init__(self, root: str, collection: str, spark: "SparkSession") -> None:
        super().__init__(root, collection)
        self.root = root.rstrip("/")
        self._jvm, self._conf = spark._jvm, spark._jsc.hadoopConfiguration()

    def _path(self, rel: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(f"{self.root}/{rel}" if rel else self.root)

    def _fs(self) -> Any:
        return self._path("").getFileSystem(self._conf)

    @property
    def location(self) -> str:
        return f"{self.root}/{self.collection}.manifest.json"

    def full_path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read_manifest(self) -> Manifest | None:
        fs, path = self._fs(), self._path(f"{self.collection}.manifest.json")
        if not fs.exists(path):
            return None
        stream = fs.open(path)
        try:
            text = self._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()
        return self.manifest_type.from_json(text, self.location)

    def put(self, local_dir: str, rel: str) -> None:
        fs = self._fs()
        partial = self._path(f"{rel}.partial-{uuid.uuid4().hex[:6]}")
        fs.copyFromLocalFile(False, True, self._jvm.org.apache.hadoop.fs.Path(f"file://{local_dir}"), partial)
        if not fs.rename(partial, self._path(rel)):
            raise VectorStoreError(f"cannot rename {partial} to {self.full_path(rel)}")

    def fetch(self, rel: str, local_dir: str) -> None:
        fs = self._fs()
        for status in fs.listStatus(self._path(rel)):
            fs.copyToLocalFile(False, status.getPath(), self._jvm.org.apache.hadoop.fs.Path(f"file://{local_dir}"),
                               True)

    def write_manifest(self, manifest: Manifest) -> None:
        fs = self._fs()
        tmp, final = self._path(f"{self.collection}.manifest.json.tmp-{uuid.uuid4().hex[:6]}"), \
            self._path(f"{self.collection}.manifest.json")
        out = fs.create(tmp, True)
        try:
            out.write(bytearray(manifest.to_json().encode("utf-8")))
        finally:
            out.close()
        # Hadoop's rename does not overwrite: drop the old manifest first. A reader in that
        # gap finds no manifest and fails loudly; it never reads a half-built state.
        if fs.exists(final):
            fs.delete(final, False)
        if not fs.rename(tmp, final):
            raise VectorStoreError(f"cannot publish {self.location}")

    def collect_garbage(self, keep: Sequence[str]) -> list[str]:
        fs, folder = self._fs(), self._path(self.shards_folder)
        if not fs.exists(folder):
            return []
        kept = {os.path.basename(k) for k in keep}
        removed = [s.getPath().getName() for s in fs.listStatus(folder) if s.getPath().getName() not in kept]
        for name in removed:
            fs.delete(self._path(f"{self.shards_folder}/{name}"), True)
        return removed


def open_store(cfg: ChromaConfig, spark: "SparkSession | None" = None) -> ShardStore:
    """The store of ``cfg.collection`` under ``cfg.path``: a POSIX path, or a Hadoop URI (needs ``spark``)."""
    if _is_hadoop_uri(cfg.path):
        if spark is None:
            raise VectorStoreError(f"chroma.path {cfg.path!r} is a Hadoop URI: it needs the driver's SparkSession")
        return HadoopShardStore(cfg.path, cfg.collection, spark)
    return ShardStore(cfg.path, cfg.collection)


def check_stored_encoder(stored: Mapping[str, Any], cfg: ChromaConfig, embedding_model: str, dim: int) -> None:
    """Raise when a stored index was built for another encoder, dimension or space."""
    wanted = {"embedding_model": embedding_model, "embedding_dim": int(dim), "space": cfg.space}
    diff = [f"{k}: stored {stored.get(k)!r}, configured {v!r}" for k, v in wanted.items() if stored.get(k) != v]
    if diff:
        raise VectorStoreError(
            f"collection {cfg.collection!r} does not match the configured encoder ({'; '.join(diff)}); "
            "rebuild it with --full-refresh or set chroma.collection to a new name"
        )


def spark_hash_long(value: int, seed: int = 42) -> int:
    """Spark's ``hash()`` of a bigint (Murmur3_x86_32.hashLong, seed 42), as a signed 32-bit int."""
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h1 = seed
    for word in (value & mask, (value >> 32) & mask):
        k1 = rotl((word * 0xCC9E2D51) & mask, 15) * 0x1B873593 & mask
        h1 = (rotl(h1 ^ k1, 13) * 5 + 0xE6546B64) & mask
    h1 ^= 8
    h1 = ((h1 ^ (h1 >> 16)) * 0x85EBCA6B) & mask
    h1 = ((h1 ^ (h1 >> 13)) * 0xC2B2AE35) & mask
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 >= 1 << 31 else h1


def partition_keys(n: int) -> list[int]:
    """Bigints that ``repartition(n, key)`` sends to partitions 0..n-1: one shard per task.

    ``repartition`` places a row in ``pmod(hash(key), n)``; the tasks check what they got.
    """
    found: dict[int, int] = {}
    key = 0
    while len(found) < n:
        found.setdefault(spark_hash_long(key) % n, key)  # Python's % is pmod for n > 0
        key += 1
    return [found[p] for p in range(n)]
