"""The published BM25 index: sharded like the vector index, built in Spark tasks, scored with corpus figures.

A chunk's lexical shard is its vector shard, ``crc32(doc_id) % N`` with the Chroma index's
``N`` (:mod:`sparkrag.index.layout`), so a task that opens shard ``i`` of both holds every
chunk of the same documents. Layout under ``lexical.path``::

    bm25.manifest.json                   dirs, per-shard fingerprints/counts/lengths, stats dir
    bm25.shards/s003-g000007-1a2b3c/     one shard: a saved :class:`~sparkrag.index.lexical.LexicalIndex`
    bm25.shards/stats-g000007-4d5e6f/    the corpus's document frequencies (parquet, written by Spark)

The ingest job compares each shard's ``(chunk_id, doc_hash)`` fingerprint (a Spark aggregate,
the Chroma sync's) with the manifest's and rebuilds only the changed shards, one Spark task
each. BM25 needs corpus-wide figures (documents, mean length, document frequencies): every
shard stores its own terms, a Spark aggregate sums them over all shards into the stats
folder, and every shard scores with the sums at query time (:mod:`sparkrag.index.bm25`), so
a sharded score equals the one-index score and an unchanged shard is never rewritten. A
shard with few changes gets a delta folder over its base, as a Chroma shard does
(:mod:`sparkrag.index.lexical_build`; manifest ``deltas``).
Publishing replaces the manifest atomically; the driver holds per-shard summaries only.

The folder must be readable by every executor (local mode, NFS, a DBFS or Unity Catalog
volume), as the embedded Chroma path is; ``answer.chroma_access: snapshot`` ships a copy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence


from sparkrag.config import LexicalConfig
from sparkrag.errors import VectorStoreError
from sparkrag.index.bm25 import FieldStats
from sparkrag.index.layout import Manifest, ShardStore
from sparkrag.index.lexical import LexicalIndex, settings_of
from sparkrag.models import worker_cached

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from sparkrag.index.shard_jobs import ShardSummaries

__all__ = ["LexicalManifest", "LexicalRefs", "ShardedLexical", "sum_stats", "sync_lexical_index",
           "resolve_lexical", "load_published"]

log = logging.getLogger(__name__)

NAME = "bm25"  # bm25.manifest.json, bm25.shards/


@dataclass(frozen=True)
class LexicalManifest(Manifest):
    """The published lexical index; ``counts`` are documents per shard, ``*_lens`` their total lengths."""

    settings: str = ""
    chunks_version: int | None = None
    text_lens: tuple[int, ...] = ()
    title_lens: tuple[int, ...] = ()
    stats_dir: str = ""
    previous_stats: str = ""

    def kept_dirs(self) -> list[str]:
        return [*super().kept_dirs(), self.stats_dir, self.previous_stats]


class LexicalStore(ShardStore):
    manifest_type = LexicalManifest

    def __init__(self, root: str) -> None:
        super().__init__(root, NAME)


def _settings_key(cfg: LexicalConfig) -> str:
    return json.dumps(settings_of(cfg), sort_keys=True)


# ---- reading: the corpus figures and the shards ----

def stats_from(terms: Mapping[str, Sequence[Any]], n_docs: int, text_len: int, title_len: int | None, *,
               key: str) -> tuple[FieldStats, FieldStats | None]:
    """Text and title :class:`FieldStats` from summed ``field, term, df`` columns and the totals."""
    df: dict[str, dict[str, int]] = {"text": {}, "title": {}}
    for field, term, count in zip(terms["field"], terms["term"], terms["df"]):
        df[field][term] = int(count)
    text = FieldStats(n_docs, text_len, lambda t: df["text"].get(t, 0), key=key)
    title = FieldStats(n_docs, title_len, lambda t: df["title"].get(t, 0), key=key) if title_len is not None else None
    return text, title


def sum_stats(term_tables: Sequence[Mapping[str, Sequence[Any]]],
              lengths: Sequence[tuple[int, int, int]]) -> tuple[FieldStats, FieldStats | None]:
    """The corpus figures of in-memory shards (``term_frequencies()`` and ``(docs, text_len, title_len)`` each)."""
    summed: dict[tuple[str, str], int] = {}
    for table in term_tables:
        for field, term, count in zip(table["field"], table["term"], table["df"]):
            summed[(field, term)] = summed.get((field, term), 0) + int(count)
    columns = {"field": [f for f, _ in summed], "term": [t for _, t in summed], "df": list(summed.values())}
    return stats_from(columns, sum(n for n, _, _ in lengths), sum(t for _, t, _ in lengths),
                      sum(t for _, _, t in lengths), key=f"memory-{uuid.uuid4().hex[:8]}")


class ShardedLexical:
    """Several :class:`LexicalIndex` shards queried as one, each scoring with the corpus figures.

    A query's top ``n_results`` is the best ``n_results`` of every shard's own top
    ``n_results``, by score (ties: shard order, then rank), which is exactly the one
    index's answer when no two chunks tie.
    """

    def __init__(self, shards: Sequence[LexicalIndex], text: FieldStats, title: FieldStats | None) -> None:
        self.shards = [s.with_stats(text, title) for s in shards]
        self.settings = dict(self.shards[0].settings) if self.shards else {}

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def ids(self) -> list[str]:
        return [i for s in self.shards for i in s.ids]

    @property
    def documents(self) -> list[str]:
        return [d for s in self.shards for d in s.documents]

    @property
    def metadatas(self) -> list[dict[str, Any]]:
        return [m for s in self.shards for m in s.metadatas]

    def with_title_weight(self, weight: float) -> "ShardedLexical":
        copy = ShardedLexical.__new__(ShardedLexical)
        copy.shards = [s.with_title_weight(weight) for s in self.shards]
        copy.settings = {**self.settings, "title_weight": float(weight)}
        return copy

    def query(self, query_texts: Sequence[str], n_results: int = 10, where: Any = None,
              where_document: Any = None) -> dict[str, list[list[Any]]]:
        """Like :meth:`LexicalIndex.query`, over every shard."""
        parts = [s.query(query_texts, n_results=n_results, where=where, where_document=where_document)
                 for s in self.shards]
        return merge_lexical(parts, n_results)


def merge_lexical(parts: Sequence[Mapping[str, list[list[Any]]]], n_results: int) -> dict[str, list[list[Any]]]:
    """Per query, the best ``n_results`` of the shards' answers (``parts`` in shard order)."""
    keys = ("ids", "scores", "documents", "metadatas")
    out: dict[str, list[list[Any]]] = {k: [] for k in keys}
    n_queries = len(parts[0]["ids"]) if parts else 0
    for j in range(n_queries):
        rows = [(-score, s, r) for s, part in enumerate(parts) for r, score in enumerate(part["scores"][j])]
        rows.sort()
        picked = rows[:n_results]
        for k in keys:
            out[k].append([parts[s][k][j][r] for _, s, r in picked])
    return out


@dataclass(frozen=True)
class LexicalRefs:
    """Where a published lexical index is, for executors: picklable, resolved once on the driver.

    ``dirs`` and ``stats_dir`` are absolute, or relative to the shipped ``archive`` when set.
    """

    dirs: tuple[str, ...]
    stats_dir: str
    n_docs: int
    text_len: int
    title_len: int | None
    archive: str | None = None
    title_weight: float | None = None  # None: the index's own
    deltas: tuple[str, ...] = ()  # per shard, its delta folder ("" none), as ``dirs``

    def _path(self, rel: str) -> str:
        if self.archive is None:
            return rel
        from pyspark import SparkFiles

        return os.path.join(SparkFiles.get(self.archive), rel)

    def stats(self) -> tuple[FieldStats, FieldStats | None]:
        """The corpus figures, read once per worker."""
        def read() -> tuple[FieldStats, FieldStats | None]:
            import pyarrow.parquet as pq

            terms = pq.read_table(self._path(self.stats_dir)).to_pydict()
            return stats_from(terms, self.n_docs, self.text_len, self.title_len, key=self.stats_dir)

        return worker_cached(("sparkrag.lexical.stats", self.stats_dir, self.archive), read)

    def _read(self, shard: int) -> LexicalIndex:
        from sparkrag.index.lexical_build import open_patched

        delta = self.deltas[shard] if self.deltas else ""
        return open_patched(self._path(self.dirs[shard]), self._path(delta) if delta else None).with_stats(
            *self.stats())

    def _key(self, shard: int) -> tuple[Any, ...]:
        return self.dirs[shard], self.deltas[shard] if self.deltas else "", self.archive

    def open_shard(self, shard: int) -> LexicalIndex:
        """Shard ``shard`` scoring with the corpus figures, once per worker (a worker holds the shards it touched)."""
        index = worker_cached(("sparkrag.lexical.shard", *self._key(shard)), lambda: self._read(shard))
        return index if self.title_weight is None else index.with_title_weight(self.title_weight)

    def open_shard_alone(self, shard: int) -> LexicalIndex:
        """Shard ``shard``, replacing the shard this worker held before (partitioned access)."""
        from sparkrag.models import worker_slot

        index = worker_slot("sparkrag.partitioned.lexical", self._key(shard), lambda: self._read(shard))
        return index if self.title_weight is None else index.with_title_weight(self.title_weight)

    def on_disk(self) -> list[str]:
        """Every folder the shards are read from (bases and deltas)."""
        return [*self.dirs, *(d for d in self.deltas if d)]

    def open_all(self) -> ShardedLexical:
        """Every shard as one index (replicated access)."""
        return ShardedLexical([self.open_shard(i) for i in range(len(self.dirs))], *self.stats())

    def __call__(self) -> ShardedLexical:
        return self.open_all()


def resolve_lexical(path: str) -> tuple[LexicalRefs, LexicalManifest]:
    """The published index under ``path`` (resolved once: later publishes are not seen by this job).

    Raises:
        VectorStoreError: nothing was published there (the message names ``lexical.path``).
    """
    store = LexicalStore(path)
    manifest = store.read_manifest()
    if manifest is None:
        raise VectorStoreError(f"no lexical index at {path} (lexical.path); run the ingest job with "
                               "lexical.enabled=true before retrieval.mode lexical or hybrid")
    has_title = json.loads(manifest.settings or "{}").get("title_weight", 0) > 0
    refs = LexicalRefs(tuple(store.full_path(d) for d in manifest.dirs), store.full_path(manifest.stats_dir),
                       sum(manifest.counts), sum(manifest.text_lens), sum(manifest.title_lens) if has_title else None,
                       deltas=tuple(store.full_path(d) if d else "" for d in manifest.deltas))
    return refs, manifest


def load_published(path: str) -> ShardedLexical:
    """The whole published index in this process (tests, benchmarks and small corpora only)."""
    return resolve_lexical(path)[0].open_all()


def ship_lexical(spark: "SparkSession", refs: LexicalRefs) -> LexicalRefs:
    """Ship the shards and the stats of ``refs`` to every executor (one ``addArchive``)."""
    import tarfile

    from sparkrag.spark import ship_archive

    name = f"lexical-{uuid.uuid4().hex[:12]}.tar.gz"
    archive = os.path.join(tempfile.mkdtemp(prefix="sparkrag-lexical-"), name)
    rels = [f"s{i:03d}" for i in range(len(refs.dirs))]
    deltas = [f"d{i:03d}" if d else "" for i, d in enumerate(refs.deltas)]
    with tarfile.open(archive, "w:gz") as tar:
        for folder, rel in [*zip(refs.dirs, rels), *zip(refs.deltas, deltas)]:
            if folder:
                tar.add(folder, arcname=rel)
        tar.add(refs.stats_dir, arcname="stats")
    ship_archive(spark, archive)
    log.info("shipped lexical index (%d shards, %.1f MB) to executors", len(rels), os.path.getsize(archive) / 1e6)
    return dataclasses.replace(refs, dirs=tuple(rels), deltas=tuple(deltas), stats_dir="stats", archive=name)


# ---- building: one Spark task per changed shard (:mod:`sparkrag.index.lexical_build`) ----

def sync_lexical_index(chunks: "DataFrame | None", cfg: LexicalConfig, *, chunks_version: int | None,
                       shards: int | None = None, full_refresh: bool = False, compact_at: float = 0.0,
                       spark: "SparkSession | None" = None, summaries: "ShardSummaries | None" = None) -> dict[str, int]:
    """Bring the shards whose chunks changed since the last build in step (each in a Spark task), then publish.

    Args:
        chunks: the chunks table (None: no table yet, an empty index is published).
        chunks_version: its Delta version; equal to the manifest's (same settings and shard
            count) means nothing to do.
        shards: the shard count (the vector index's); default the published one, else 1.
        compact_at: a changed shard is written as a delta over its base while its changes stay
            under this fraction of the base (``chroma.compact_at``, :mod:`sparkrag.index.lexical_build`);
            0: always rebuilt.
        summaries: the table's shard summaries, shared with the Chroma sync (else computed here).

    Returns:
        ``{"chunks", "shards", "shards_rebuilt", "shards_delta", "tokenized", "rebuilt"}`` (rebuilt: 1
        when anything was published).
    """
    from pyspark.sql import SparkSession

    from sparkrag.index.build import ShardTask
    from sparkrag.index.lexical_build import build_tasks, sum_terms
    from sparkrag.index.shard_jobs import ShardSummaries

    if not cfg.enabled:
        return {}
    spark = spark or (chunks.sparkSession if chunks is not None else SparkSession.getActiveSession())
    os.makedirs(cfg.path, exist_ok=True)
    store = LexicalStore(cfg.path)
    current = store.read_manifest()
    settings = _settings_key(cfg)
    n = max(1, int(shards or (current.shards if current else 1)))
    reuse = current is not None and not full_refresh and current.settings == settings and current.shards == n
    if reuse and current.chunks_version == chunks_version:
        log.info("lexical index %s is current (chunks table version %s)", cfg.path, chunks_version)
        return {"chunks": sum(current.counts), "shards": n, "shards_rebuilt": 0, "shards_delta": 0, "tokenized": 0,
                "rebuilt": 0}
    if summaries is None:
        summaries = ShardSummaries(chunks)
        try:
            return sync_lexical_index(chunks, cfg, chunks_version=chunks_version, shards=n, full_refresh=full_refresh,
                                      compact_at=compact_at, spark=spark, summaries=summaries)
        finally:
            summaries.release()
    fingerprints, counts = summaries(n)
    generation = (current.generation if current else 0) + 1
    tasks = [ShardTask(i, NAME, base=current.dirs[i] if reuse else None, target=store.new_dir(i, generation),
                       root=store.root, compact_at=float(compact_at))  # unchanged chunks keep their postings
             for i in range(n) if not reuse or current.fingerprints[i] != fingerprints[i]]
    results = {r["shard"]: r for r in build_tasks(spark, summaries, n, tasks, cfg)}
    for i, r in results.items():
        if r["fingerprint"] != fingerprints[i]:
            raise VectorStoreError(f"lexical shard {i}: built {r['total']} chunks that differ from the chunks "
                                   f"table's {counts[i]}; the table changed during the sync? rerun")
    keep = {i: (current.dirs[i], current.delta(i), current.text_lens[i], current.title_lens[i])
            for i in range(n)} if reuse else {}
    keep.update({i: (r["target"], r["delta"], r["text_len"], r["title_len"]) for i, r in results.items()})
    dirs, deltas = [keep[i][0] for i in range(n)], [keep[i][1] for i in range(n)]
    stats_dir = f"{store.shards_folder}/stats-g{generation:06d}-{uuid.uuid4().hex[:6]}"
    sum_terms(spark, store, dirs, deltas, stats_dir)
    store.publish(LexicalManifest(
        collection=NAME, shards=n, dirs=tuple(dirs), fingerprints=tuple(fingerprints), counts=tuple(counts),
        embedding_model="", embedding_dim=0, space="", generation=generation,
        previous=tuple(current.live_dirs()) if current else (), settings=settings, chunks_version=chunks_version,
        text_lens=tuple(int(keep[i][2]) for i in range(n)), title_lens=tuple(int(keep[i][3]) for i in range(n)),
        stats_dir=stats_dir, previous_stats=current.stats_dir if current else "",
        deltas=tuple(deltas) if any(deltas) else ()))
    _drop_format2(cfg.path)
    added = sum(int(r["added"]) for r in results.values())
    changed = sorted(results)
    log.info("lexical index %s: %d chunks in %d shard(s), rebuilt %s (%d chunks tokenized)", cfg.path, sum(counts), n,
             changed if len(changed) < n else "all", added)
    return {"chunks": sum(counts), "shards": n, "shards_rebuilt": len(changed),
            "shards_delta": sum(1 for r in results.values() if r["delta"]), "tokenized": added, "rebuilt": 1}


def _drop_format2(path: str) -> None:
    """Remove an index of the one-folder layout (``manifest.json`` + ``v-*``) once a sharded one is published."""
    for name in os.listdir(path):
        if name == "manifest.json" or name.startswith(("v-", ".staging-v-")):
            full = os.path.join(path, name)
            shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
