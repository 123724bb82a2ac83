"""Building one shard of the Chroma index inside one Spark task (its only writer).

The driver (:func:`sparkrag.index.sync.sync_collection`) sends each changed shard's rows
of the chunks table to exactly one task. The task brings the shard in step with them by
``(chunk_id, doc_hash)``: delete ids the table no longer has or holds with another hash,
add what the shard lacks, then verify that the shard holds exactly the table's ids.

Embedded shards are built in a local staging directory, closed, then copied to a new
versioned directory next to the manifest; nothing is published until the driver replaces
the manifest. Server shards (``{collection}-s{i}``) are written in place: one task per
shard collection.

An embedded shard is a *base* directory, never written again, plus at most one *delta*.
A base records its ``(chunk_id, doc_hash)`` pairs in ``PAIRS_FILE``. While the chunks that
differ from the base (added, changed, deleted) stay under ``chroma.compact_at`` times the
base's size, a task writes only a delta: a new, small Chroma directory holding the added
and changed chunks, and ``MASKED_FILE``, the base ids that readers must skip (deleted or
changed). Each run rebuilds the delta against the base, so a shard never has more than
one, and its cost follows the changes, not the shard. Past the threshold (or with
``compact_at`` 0, or a base without ``PAIRS_FILE``) the task compacts: it copies the base
into staging, applies every difference and writes a new base without a delta. When every
task's base has its pairs, a task receives only the changes (``ShardTask.diff``): the rows its
base lacks, whole, and the base pairs the table lost, as keys (:func:`whole_rows`).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from sparkrag.config import ChromaConfig
from sparkrag.errors import VectorStoreError
from sparkrag.index.layout import ShardStore, shard_fingerprint

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ShardTask", "RESULT_SCHEMA", "PAIRS_FILE", "PAIRS_DIGEST", "MASKED_FILE", "build_shard", "apply_rows",
           "extract_archive", "read_masked", "read_pairs", "write_pairs", "split_delta", "whole_rows"]

log = logging.getLogger(__name__)

RESULT_SCHEMA = ("shard int, target string, delta string, deleted long, loaded long, total long, "
                 "fingerprint string, archive binary, load_seconds double, copy_seconds double")
PAIRS_FILE = "sparkrag-pairs.parquet"  # in a base: its (chunk_id, doc_hash) pairs
PAIRS_DIGEST = "sparkrag-pairs.sha256"  # beside it: their shard_fingerprint (equal digests, equal pairs)
MASKED_FILE = "sparkrag-masked.json"  # in a delta: the base's ids it hides


@dataclass(frozen=True)
class ShardTask:
    """What one task builds: ``shard``'s collection, from ``base`` (embedded, relative dir) into ``target``."""

    shard: int
    collection: str  # the collection name inside the shard directory, or on the server
    base: str | None = None  # published version to start from; None: an empty shard
    target: str | None = None  # new versioned directory (embedded); None: a server collection
    root: str | None = None  # the store's POSIX root; None: return the shard as a tar.gz (Hadoop store)
    compact_at: float = 0.0  # a delta may hold up to this fraction of the base's size; 0: always rebuild
    diff: bool = False  # the rows are the changes against the base's pairs (see whole_rows), not the whole shard


def _doc_hashes(pdf: "pd.DataFrame") -> list[str]:
    return pdf["doc_hash"].astype(str).tolist()


def apply_rows(collection: Any, batches: Iterable["pd.DataFrame"], *, shard: int, dim: int,
               batch_size: int | None, seen: dict[str, str] | None = None) -> dict[str, Any]:
    """Make ``collection`` hold exactly the rows streamed in ``batches`` (``WRITE_COLUMNS`` + doc_hash + _shard).

    ``seen``: pairs of rows already streamed elsewhere that the collection holds as they are.

    Returns:
        ``{"deleted", "loaded", "total", "fingerprint", "pairs"}`` (pairs: chunk_id -> doc_hash).

    Raises:
        VectorStoreError: a row of another shard arrived, or the verify failed.
    """
    from sparkrag.index.vectorstore import collection_hashes
    from sparkrag.index.vectorstore import _max_batch, delete_chunks, partition_payload, upsert_chunks, verify_collection

    actual = collection_hashes(collection)
    size = _max_batch(collection, batch_size)
    seen = dict(seen or {})
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
        _check_shard(pdf, shard)
        pdf = whole_rows(pdf, seen, lambda cid, h: actual.get(cid) == h, shard)
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
    return {**counts, "total": len(seen), "fingerprint": shard_fingerprint(seen), "pairs": seen}


def whole_rows(pdf: "pd.DataFrame", seen: dict[str, str], held: Any, shard: int) -> "pd.DataFrame":
    """The batch's rows sent whole. With a diff (``ShardTask.diff``) the rows flagged ``_masked`` are base pairs
    the table no longer has, sent as keys: they leave ``seen`` (which starts as the base's pairs) and must be
    ``held`` by the base."""
    if "_masked" not in pdf.columns:
        return pdf
    flag = pdf["_masked"].to_numpy(dtype=bool)
    if flag.any():
        part = pdf[flag]
        pairs = dict(zip(part["chunk_id"].astype(str), _doc_hashes(part)))
        wrong = [cid for cid, h in pairs.items() if not held(cid, h)]
        if wrong:
            raise VectorStoreError(f"shard {shard}: chunk {wrong[0]!r} is to be hidden but the shard does not hold "
                                   f"it ({len(wrong)} such); the shard changed during the sync? rerun")
        for cid, h in pairs.items():
            if seen.get(cid) == h:  # not when the same id already came back with another hash
                del seen[cid]
    return pdf[~flag]


def _check_shard(pdf: "pd.DataFrame", shard: int) -> None:
    if (pdf["_shard"] != shard).any():
        raise VectorStoreError(f"shard {shard}: got rows of shard(s) {sorted(set(pdf['_shard']) - {shard})}; "
                               "one task must see exactly one shard")


def write_pairs(directory: str, pairs: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = sorted(pairs)
    pq.write_table(pa.table({"chunk_id": ids, "doc_hash": [pairs[i] for i in ids]}),
                   os.path.join(directory, PAIRS_FILE))
    with open(os.path.join(directory, PAIRS_DIGEST), "w", encoding="utf-8") as fh:
        fh.write(shard_fingerprint(pairs))


def read_pairs(directory: str) -> dict[str, str] | None:
    """A base's pairs, or None when it has no ``PAIRS_FILE`` (built before deltas existed)."""
    import pyarrow.parquet as pq

    path = os.path.join(directory, PAIRS_FILE)
    if not os.path.isfile(path):
        return None
    table = pq.read_table(path)
    return dict(zip(table.column("chunk_id").to_pylist(), table.column("doc_hash").to_pylist()))


def read_masked(directory: str) -> frozenset[str]:
    """The base ids a delta directory hides."""
    with open(os.path.join(directory, MASKED_FILE), encoding="utf-8") as fh:
        return frozenset(json.load(fh))


@dataclass
class DeltaSplit:
    """A shard's rows against its base: what a delta would hold, or (``fits`` False) what compaction applies."""

    seen: dict[str, str]  # the shard's pairs as streamed so far (diff: the base's, with the changes applied)
    changed: list["pd.DataFrame"]  # rows the base lacks or holds with another hash
    rest: Iterator["pd.DataFrame"]  # rows not streamed yet (compaction only)
    masked: list[str]
    fits: bool


def split_delta(batches: Iterable["pd.DataFrame"], shard: int, base: dict[str, str], limit: float, *,
                diff: bool = False) -> DeltaSplit:
    """Stream rows until the changes pass ``limit`` (then stop: the task compacts) or the rows end.

    ``diff``: the rows are the changes against ``base`` (:func:`whole_rows`), not every row of the shard.
    """
    seen: dict[str, str] = dict(base) if diff else {}
    changed: list["pd.DataFrame"] = []
    n_changed = 0
    stream = iter(batches)
    for pdf in stream:
        if not len(pdf):
            continue
        _check_shard(pdf, shard)
        pdf = whole_rows(pdf, seen, lambda cid, h: base.get(cid) == h, shard)
        ids, hashes = pdf["chunk_id"].astype(str).tolist(), _doc_hashes(pdf)
        seen.update(zip(ids, hashes))
        need = [k for k, (cid, h) in enumerate(zip(ids, hashes)) if base.get(cid) != h]
        if need:
            changed.append(pdf.iloc[need])
            n_changed += len(need)
        if n_changed > limit:
            return DeltaSplit(seen, changed, stream, [], fits=False)
    masked = sorted(cid for cid, h in base.items() if seen.get(cid) != h)
    return DeltaSplit(seen, changed, iter(()), masked, fits=n_changed + len(masked) <= limit)


def _tar_bytes(directory: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return buf.getvalue()


def build_shard(task: ShardTask, batches: Iterable["pd.DataFrame"], cfg: ChromaConfig, *, embedding_model: str,
                dim: int) -> dict[str, Any]:
    """Build ``task``'s shard from ``batches``; embedded: in local staging, then copied next to ``task.target``.

    Embedded, with a base and ``task.compact_at`` > 0: a delta over the base when the
    changes fit (``target`` stays the base, ``delta`` is the new directory), else a new base.

    Returns:
        One result row (see ``RESULT_SCHEMA``); ``archive`` holds the shard as tar.gz when
        ``task.root`` is None (the driver uploads it), else None.
    """
    from sparkrag.index.vectorstore import open_client, open_collection

    named = dataclasses.replace(cfg, collection=task.collection)
    result: dict[str, Any] = {"shard": task.shard, "target": task.target, "delta": "", "archive": None,
                              "copy_seconds": 0.0}
    if task.target is None:  # server: one task writes this shard's collection in place
        start = time.perf_counter()
        collection = open_collection(open_client(named), named, embedding_model=embedding_model, dim=dim, create=True)
        result.update(apply_rows(collection, batches, shard=task.shard, dim=dim, batch_size=cfg.batch_size))
        result.pop("pairs")
        return {**result, "load_seconds": time.perf_counter() - start}
    store = ShardStore(task.root or "", task.collection)
    seen = None
    if task.base is not None and task.root is not None and task.compact_at > 0:
        base = read_pairs(store.full_path(task.base))
        if base is not None:
            split = split_delta(batches, task.shard, base, task.compact_at * len(base), diff=task.diff)
            if split.fits:
                return _build_delta(task, split, named, embedding_model=embedding_model, dim=dim)
            log.info("shard %d: changes pass chroma.compact_at=%s of its %d chunks: rebuilding it", task.shard,
                     task.compact_at, len(base))
            batches, seen = itertools.chain(split.changed, split.rest), split.seen
    staging = tempfile.mkdtemp(prefix=f"sparkrag-shard{task.shard:03d}-")
    try:
        start = time.perf_counter()
        if task.base is not None:
            store.fetch(task.base, staging)
            for name in (PAIRS_FILE, PAIRS_DIGEST):  # rewritten below from what the shard holds
                if os.path.exists(os.path.join(staging, name)):
                    os.remove(os.path.join(staging, name))
        copied = time.perf_counter()
        result.update(_load_staging(staging, named, batches, task.shard, embedding_model=embedding_model, dim=dim,
                                    seen=seen))
        write_pairs(staging, result.pop("pairs"))
        loaded = time.perf_counter()
        result["target"] = _copy_out(staging, task, result)
        result.update(load_seconds=loaded - copied, copy_seconds=(copied - start) + (time.perf_counter() - loaded))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("shard %d: %d vectors (%d loaded, %d deleted) -> %s", task.shard, result["total"], result["loaded"],
             result["deleted"], result["target"])
    return result


def _load_staging(staging: str, named: ChromaConfig, batches: Iterable["pd.DataFrame"], shard: int, *,
                  embedding_model: str, dim: int, seen: dict[str, str] | None = None) -> dict[str, Any]:
    """Open (or create) the collection in ``staging``, apply ``batches``, close it (flushed for copying)."""
    from sparkrag.index.vectorstore import open_collection, persistent_client

    client = persistent_client(staging)
    try:
        collection = open_collection(client, dataclasses.replace(named, path=staging),
                                     embedding_model=embedding_model, dim=dim, create=True)
        return apply_rows(collection, batches, shard=shard, dim=dim, batch_size=named.batch_size, seen=seen)
    finally:
        client.close()  # flushes and releases the SQLite files before they are copied


def _copy_out(staging: str, task: ShardTask, result: dict[str, Any]) -> str:
    """Put ``staging`` under a fresh name derived from ``task.target`` (or tar it for the driver); that name."""
    # A retried or speculative attempt must not collide with a directory an earlier attempt left.
    target = f"{task.target}-{uuid.uuid4().hex[:4]}"
    if task.root is None:
        result["archive"] = _tar_bytes(staging)
    else:
        ShardStore(task.root, task.collection).put(staging, target)
    return target


def _build_delta(task: ShardTask, split: DeltaSplit, named: ChromaConfig, *, embedding_model: str,
                 dim: int) -> dict[str, Any]:
    """Write the delta of ``split`` (changed rows + masked base ids) into a new directory; the base stays."""
    staging = tempfile.mkdtemp(prefix=f"sparkrag-delta{task.shard:03d}-")
    try:
        start = time.perf_counter()
        loaded = _load_staging(staging, named, split.changed, task.shard, embedding_model=embedding_model, dim=dim)
        with open(os.path.join(staging, MASKED_FILE), "w", encoding="utf-8") as fh:
            json.dump(split.masked, fh)
        built = time.perf_counter()
        result = {"shard": task.shard, "target": task.base, "archive": None, "loaded": loaded["loaded"],
                  "deleted": len(split.masked), "total": len(split.seen),
                  "fingerprint": shard_fingerprint(split.seen), "load_seconds": built - start}
        result["delta"] = _copy_out(staging, task, result)
        result["copy_seconds"] = time.perf_counter() - built
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("shard %d: %d vectors; delta of %d added/changed and %d hidden over base %s -> %s", task.shard,
             result["total"], result["loaded"], result["deleted"], task.base, result["delta"])
    return result


def extract_archive(archive: bytes) -> str:
    """A local directory holding a shard returned as tar.gz (Hadoop stores); the caller removes it."""
    local = tempfile.mkdtemp(prefix="sparkrag-shard-upload-")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(local, filter="data")
    return local
