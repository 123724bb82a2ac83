"""Building one shard of the BM25 index inside one Spark task, as a new base or as a delta over one.

A shard is a *base* folder (a saved :class:`~sparkrag.index.lexical.LexicalIndex`, never
written again, with its ``(chunk_id, doc_hash)`` pairs in ``PAIRS_FILE``) plus at most one
*delta*, following the Chroma shard's rule (:mod:`sparkrag.index.build`, ``chroma.compact_at``):
while the chunks that differ from the base stay under ``compact_at`` times its size, the task
tokenizes only the added and changed chunks and writes a small delta folder:

- those chunks as a saved ``LexicalIndex``;
- ``MASKED_FILE``: the base ids readers drop (deleted or changed);
- ``DF_CHANGE_FILE``: per term, the delta's document frequency minus that of the masked base
  chunks, so the corpus figures summed over bases and changes equal a rebuilt index's.

A reader merges base and delta when it opens the shard (:func:`open_patched`): the chunks the
base keeps, then the delta's, which is the order, and so the postings and scores, of a shard
rebuilt from the same rows. Past the threshold (or without a base's pairs) the task rebuilds
the shard from the base, tokenizing only new or changed chunks.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from sparkrag.config import LexicalConfig
from sparkrag.index.build import (MASKED_FILE, ShardTask, read_masked, read_pairs, split_delta, whole_rows,
                                  write_pairs)
from sparkrag.index.layout import ShardStore, shard_fingerprint
from sparkrag.index.lexical import LexicalIndex

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from sparkrag.index.bm25 import Postings
    from sparkrag.index.shard_jobs import ShardSummaries

__all__ = ["DF_CHANGE_FILE", "RESULT_SCHEMA", "build_tasks", "open_patched", "sum_terms"]

log = logging.getLogger(__name__)

DF_CHANGE_FILE = "sparkrag-df-change.parquet"  # in a delta: per term, df added minus df hidden
RESULT_SCHEMA = ("shard int, target string, delta string, fingerprint string, total long, added long, text_len long, "
                 "title_len long")
TERMS_SCHEMA = "field string, term string, df long"
COLUMNS = ("chunk_id", "text", "doc_id", "chunk_index", "title", "metadata", "doc_hash", "_shard")


def open_patched(base: str, delta: str | None) -> LexicalIndex:
    """The shard saved in ``base`` with ``delta`` applied (None: the base alone)."""
    index = LexicalIndex.load(base)
    if not delta:
        return index
    masked = read_masked(delta)
    return index.merged([cid not in masked for cid in index.ids], LexicalIndex.load(delta))


def _index_rows(frames: Iterable["pd.DataFrame"]) -> tuple[list[str], list[str], list[dict[str, Any]], list[str]]:
    """Ids, texts, Chroma metadata and doc hashes of whole rows, a repeated chunk once."""
    from sparkrag.index.vectorstore import to_chroma_metadata

    ids, texts, metas, hashes, seen = [], [], [], [], set()
    for pdf in frames:
        for cid, text, doc, idx, title, meta, doc_hash in zip(
                pdf["chunk_id"], pdf["text"], pdf["doc_id"], pdf["chunk_index"], pdf["title"], pdf["metadata"],
                pdf["doc_hash"]):
            cid = str(cid)
            if cid in seen:
                continue
            seen.add(cid)
            ids.append(cid)
            texts.append(text or "")
            metas.append(to_chroma_metadata(doc, None if idx is None else int(idx), title if isinstance(title, str)
                                            else None, dict(meta) if meta is not None else None))
            hashes.append(None if doc_hash is None else str(doc_hash))
    return ids, texts, metas, hashes


def _put(store: ShardStore, staging: str, name: str) -> str:
    final = f"{name}-{uuid.uuid4().hex[:4]}"  # a retried attempt must not collide with an earlier one
    try:
        store.put(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _lengths(text: "Postings", title: "Postings | None") -> tuple[int, int]:
    return int(text.lengths.sum()), int(title.lengths.sum()) if title is not None else 0


def build_shard(task: ShardTask, cfg: LexicalConfig, batches: Iterable["pd.DataFrame"]) -> dict[str, Any]:
    """Bring ``task``'s shard in step with its rows (``COLUMNS``; with ``task.diff``, the changes only)."""
    store = ShardStore(task.root or "", task.collection)
    pairs = read_pairs(store.full_path(task.base)) if task.base is not None and task.compact_at > 0 else None
    seen: dict[str, str] = {}
    if pairs is not None:
        split = split_delta(batches, task.shard, pairs, task.compact_at * len(pairs), diff=task.diff)
        if split.fits and not split.changed and not split.masked:  # back to what the base holds
            text_len, title_len = _lengths(*LexicalIndex.load_postings(store.full_path(task.base or ""))[1:])
            return {"shard": task.shard, "target": task.base, "delta": "", "fingerprint": shard_fingerprint(split.seen),
                    "total": len(split.seen), "added": 0, "text_len": text_len, "title_len": title_len}
        if split.fits:
            return _build_delta(task, cfg, store, split.changed, split.masked, split.seen)
        log.info("lexical shard %d: changes pass compact_at=%s of its %d chunks: rebuilding it", task.shard,
                 task.compact_at, len(pairs))
        batches, seen = itertools.chain(split.changed, split.rest), dict(split.seen)
    from sparkrag.index.vectorstore import DOC_HASH_KEY

    old = LexicalIndex.load(store.full_path(task.base)) if task.base is not None else None
    held = {cid: m.get(DOC_HASH_KEY) for cid, m in zip(old.ids, old.metadatas)} if old is not None else {}

    def added() -> Iterator["pd.DataFrame"]:  # rows the base lacks or holds with another hash
        for pdf in batches:
            pdf = whole_rows(pdf, seen, lambda cid, h: held.get(cid) == h, task.shard)
            pairs = list(zip(pdf["chunk_id"].astype(str), pdf["doc_hash"].astype(str)))
            seen.update(pairs)
            yield pdf[[held.get(cid) != h for cid, h in pairs]]

    ids, texts, metas, _ = _index_rows(added())
    if old is None:
        index = LexicalIndex.build(ids, texts, metas, cfg)
    else:
        index = old.updated([seen.get(cid, "\0gone") == held[cid] for cid in old.ids], ids, texts, metas)
    staging = tempfile.mkdtemp(prefix=f"sparkrag-lexical{task.shard:03d}-")
    index.save(staging)
    write_pairs(staging, seen)
    text_len, title_len = _lengths(index.text, index.title)
    return {"shard": task.shard, "target": _put(store, staging, task.target or ""), "delta": "",
            "fingerprint": shard_fingerprint(seen), "total": len(index), "added": len(ids), "text_len": text_len,
            "title_len": title_len}


def _build_delta(task: ShardTask, cfg: LexicalConfig, store: ShardStore, changed: list["pd.DataFrame"],
                 masked: list[str], seen: dict[str, str]) -> dict[str, Any]:
    """The delta folder of ``changed`` rows over the base, hiding ``masked``; the base stays as it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, texts, metas, _ = _index_rows(changed)
    delta = LexicalIndex.build(ids, texts, metas, cfg)
    base_ids, text, title = LexicalIndex.load_postings(store.full_path(task.base or ""))
    hidden = set(masked)
    gone = np.fromiter((cid in hidden for cid in base_ids), dtype=bool, count=len(base_ids))
    change = delta.term_frequencies()
    text_len, title_len = _lengths(delta.text, delta.title)
    lens = []
    for name, postings in (("text", text), ("title", title)):
        if postings is None:
            lens.append(0)
            continue
        _, term_of, doc_of, _ = postings.triples()
        removed = np.bincount(term_of[gone[doc_of]], minlength=len(postings.terms))
        for k in np.flatnonzero(removed):
            change["field"].append(name)
            change["term"].append(postings.terms[k])
            change["df"].append(-int(removed[k]))
        lens.append(int(postings.lengths[~gone].sum()))
    staging = tempfile.mkdtemp(prefix=f"sparkrag-lexical-delta{task.shard:03d}-")
    delta.save(staging)
    pq.write_table(pa.table(change, schema=pa.schema([("field", pa.string()), ("term", pa.string()),
                                                      ("df", pa.int64())])),
                   os.path.join(staging, DF_CHANGE_FILE))
    with open(os.path.join(staging, MASKED_FILE), "w", encoding="utf-8") as fh:
        json.dump(masked, fh)
    log.info("lexical shard %d: delta of %d added/changed and %d hidden over base %s", task.shard, len(delta),
             len(masked), task.base)
    return {"shard": task.shard, "target": task.base, "delta": _put(store, staging, task.target or ""),
            "fingerprint": shard_fingerprint(seen), "total": len(seen), "added": len(delta),
            "text_len": lens[0] + text_len, "title_len": lens[1] + title_len}


def build_tasks(spark: "SparkSession", summaries: "ShardSummaries", n: int, tasks: list[ShardTask],
                cfg: LexicalConfig) -> list[dict[str, Any]]:
    """One Spark task per shard task; with bases' pairs, only the changes travel
    (:func:`~sparkrag.index.shard_jobs.run_shard_tasks`)."""
    from sparkrag.index.shard_jobs import run_shard_tasks

    def build(task: ShardTask, batches: Iterator["pd.DataFrame"]) -> dict[str, Any]:
        return build_shard(task, cfg, batches)

    return run_shard_tasks(spark, summaries, n, tasks, build, RESULT_SCHEMA, columns=COLUMNS)[0]


def sum_terms(spark: "SparkSession", store: ShardStore, dirs: list[str], deltas: list[str], target: str) -> None:
    """Write the corpus's document frequencies (bases' terms plus deltas' changes, summed) as parquet at ``target``."""
    from pyspark.sql import functions as F

    paths = [f"file://{store.full_path(d)}/terms.parquet" for d in dirs]
    paths += [f"file://{store.full_path(d)}/{DF_CHANGE_FILE}" for d in deltas if d]
    terms = spark.read.schema(TERMS_SCHEMA).parquet(*paths)
    summed = terms.groupBy("field", "term").agg(F.sum("df").alias("df")).where(F.col("df") > 0)
    summed.write.mode("errorifexists").parquet(f"file://{store.full_path(target)}")
