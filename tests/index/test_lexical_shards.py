"""The published, sharded BM25 index (issue #13): built in Spark tasks, rebuilt per changed shard,
scored with the corpus's figures. Real Spark (local[2]), real parquet, the shipped Wikipedia sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkrag.config import LexicalConfig
from sparkrag.index.layout import shard_of
from sparkrag.index.lexical import LexicalIndex
from sparkrag.index.lexical_shards import LexicalStore, load_published, resolve_lexical, sync_lexical_index
from sparkrag.index.vectorstore import to_chroma_metadata

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ("chunk_id string, text string, doc_id string, chunk_index int, title string, "
          "metadata map<string,string>, doc_hash string, embedding array<float>")


def sample_rows(limit: int = 120) -> list[tuple]:
    docs = [json.loads(line) for line in (ROOT / "resources/sample/documents.jsonl").read_text().splitlines()][:limit]
    return [(d["doc_id"], d["text"], d["doc_id"], 0, d["title"], {"src": "wiki"}, f"h-{d['doc_id']}", [1.0])
            for d in docs]


def one_index(rows: list[tuple], cfg: LexicalConfig) -> LexicalIndex:
    metas = [to_chroma_metadata(r[2], r[3], r[4], {**r[5], "doc_hash": r[6]}) for r in rows]
    return LexicalIndex.build([r[0] for r in rows], [r[1] for r in rows], metas, cfg)


QUESTIONS = ["When did Beyonce start becoming popular?", "What was the name of the album?",
             "Who designed the engine of the iPod?", "Frederic Chopin Warsaw piano", "the of"]


def scores_by_id(index, questions=QUESTIONS) -> list[dict[str, float]]:
    res = index.query(questions, n_results=len(index))
    return [dict(zip(i, s)) for i, s in zip(res["ids"], res["scores"])]


def shard_dirs(path: str) -> tuple[str, ...]:
    return LexicalStore(path).read_manifest().dirs


@pytest.mark.parametrize("compact_at", [0.0, 0.5])
def test_sharded_sync_scores_like_one_index_and_rebuilds_only_changed_shards(spark, tmp_path, compact_at):
    cfg = LexicalConfig(path=str(tmp_path / "lexical"), title_weight=0.5)
    rows = sample_rows()
    chunks = spark.createDataFrame(rows, SCHEMA)
    out = sync_lexical_index(chunks, cfg, chunks_version=1, shards=4, compact_at=compact_at)
    assert out == {"chunks": len(rows), "shards": 4, "shards_rebuilt": 4, "shards_delta": 0, "tokenized": len(rows),
                   "rebuilt": 1}
    published = load_published(cfg.path)
    assert sorted(published.ids) == sorted(r[0] for r in rows)
    assert all(shard_of(m["doc_id"], 4) == s for s, shard in enumerate(published.shards) for m in shard.metadatas)
    assert scores_by_id(published) == scores_by_id(one_index(rows, cfg))  # equal floats, every chunk
    first = shard_dirs(cfg.path)

    # same table version: nothing read, nothing written
    assert sync_lexical_index(chunks, cfg, chunks_version=1, shards=4)["rebuilt"] == 0
    # one document changed, one deleted: only their shards are rewritten (as deltas when compact_at allows)
    changed, deleted = rows[3][0], rows[10][0]
    edited = [(r[0], r[1] + " revised zephyrine", *r[2:6], r[6] + "-2", r[7]) if r[0] == changed else r
              for r in rows if r[0] != deleted]
    out = sync_lexical_index(spark.createDataFrame(edited, SCHEMA), cfg, chunks_version=2, shards=4,
                             compact_at=compact_at)
    touched = {shard_of(changed, 4), shard_of(deleted, 4)}
    assert out["shards_rebuilt"] == len(touched) and out["chunks"] == len(edited)
    assert out["shards_delta"] == (len(touched) if compact_at else 0)
    assert out["tokenized"] == 1  # the changed chunk; the rest of its shard kept its postings
    manifest = LexicalStore(cfg.path).read_manifest()
    second = manifest.dirs
    assert {i for i in range(4) if second[i] != first[i]} == (set() if compact_at else touched)
    assert {i for i in range(4) if manifest.delta(i)} == (touched if compact_at else set())
    again = load_published(cfg.path)
    assert scores_by_id(again) == scores_by_id(one_index(edited, cfg))  # the figures follow the change
    assert set(again.query(["zephyrine"], n_results=5)["ids"][0]) == {changed}
    assert deleted not in again.ids
    # the previous generation's folders are kept for its readers; older ones are removed
    folders = {p.name for p in (Path(cfg.path) / "bm25.shards").iterdir()}
    assert {Path(d).name for d in (*first, *second, *manifest.live_dirs())} <= folders
    assert len([f for f in folders if f.startswith("stats-")]) == 2

    # the deleted document comes back and most of one shard changes: a delta is rebuilt against its base,
    # a shard past compact_at is rebuilt whole (no delta left)
    big = shard_of(rows[0][0], 4)
    third = [(r[0], r[1] + " again", *r[2:6], r[6] + "-3", r[7]) if shard_of(r[0], 4) == big else r for r in rows]
    out = sync_lexical_index(spark.createDataFrame(third, SCHEMA), cfg, chunks_version=3, shards=4,
                             compact_at=compact_at)
    manifest = LexicalStore(cfg.path).read_manifest()
    assert not manifest.delta(big) and manifest.dirs[big] != second[big]
    assert not any(manifest.delta(i) for i in range(4))  # the other shards are their bases again
    assert scores_by_id(load_published(cfg.path)) == scores_by_id(one_index(third, cfg))


def test_reshard_settings_change_and_empty_table(spark, tmp_path):
    cfg = LexicalConfig(path=str(tmp_path / "lexical"))
    rows = sample_rows(40)
    chunks = spark.createDataFrame(rows, SCHEMA)
    sync_lexical_index(chunks, cfg, chunks_version=1, shards=2)
    out = sync_lexical_index(chunks, cfg, chunks_version=1, shards=3)  # the vector index was resharded
    assert out["shards_rebuilt"] == 3 and len(resolve_lexical(cfg.path)[0].dirs) == 3
    out = sync_lexical_index(chunks, LexicalConfig(path=cfg.path, stemmer=""), chunks_version=1, shards=3)
    assert out["shards_rebuilt"] == 3 and load_published(cfg.path).settings["stemmer"] == ""
    out = sync_lexical_index(None, cfg, chunks_version=None, shards=3)
    assert out == {"chunks": 0, "shards": 3, "shards_rebuilt": 3, "shards_delta": 0, "tokenized": 0, "rebuilt": 1}
    assert load_published(cfg.path).query(["Beyonce"], n_results=3)["ids"] == [[]]


def test_a_killed_build_is_invisible_and_an_old_layout_is_replaced(spark, tmp_path):
    path = tmp_path / "lexical"
    (path / "v-20250101T000000-abc").mkdir(parents=True)  # the one-folder layout of format 2
    (path / "manifest.json").write_text('{"version": "v-20250101T000000-abc"}')
    cfg = LexicalConfig(path=str(path))
    chunks = spark.createDataFrame(sample_rows(20), SCHEMA)
    sync_lexical_index(chunks, cfg, chunks_version=1, shards=2)
    assert not (path / "manifest.json").exists() and not list(path.glob("v-*"))
    dirs = shard_dirs(cfg.path)
    (path / "bm25.shards" / "s000-g000009-dead00-beef.partial-123456").mkdir()  # a task killed mid-copy
    assert shard_dirs(cfg.path) == dirs and len(load_published(cfg.path)) == 20
    with pytest.raises(Exception, match="no lexical index at .*lexical.path"):
        resolve_lexical(str(tmp_path / "nothing"))
