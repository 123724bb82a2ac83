"""The ingest job end to end: real local[2] Spark, real Delta (delta-rs), real embedded Chroma and
a real ``chroma run`` server, real MiniLM.

One small corpus (13 documents: sample paragraphs, one long three-paragraph document and two
synthetic ones) is ingested once per module; every scenario starts from a *copy* of that
state (Delta tables and Chroma directory), so each scenario costs one incremental run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparkrag.config import RagConfig, load_config
from sparkrag.errors import SchemaError, VectorStoreError
from sparkrag.pipelines.ingest import run_ingest
from sparkrag.schemas import CHUNKS_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = [json.loads(line) for line in (ROOT / "resources/sample/documents.jsonl").open(encoding="utf-8")]
DOC_SCHEMA = "doc_id string, title string, text string, source string, year int, published date"
META = ["source", "year", "published"]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TOL = 1e-5


def _doc(doc_id: str, title: str | None, text: str | None, i: int) -> dict[str, Any]:
    return {"doc_id": doc_id, "title": title, "text": text, "source": "wikipedia" if i % 3 else "synthetic",
            "year": None if i == 4 else 2000 + i, "published": dt.date(2020, 1 + i % 12, 1 + i)}


def _corpus() -> list[dict[str, Any]]:
    picks = [0, 30, 54, 78, 102, 126, 150, 180, 204, 228]  # one paragraph of each of the 10 articles
    docs = [_doc(SAMPLE[i]["doc_id"], SAMPLE[i]["title"], SAMPLE[i]["text"], n) for n, i in enumerate(picks)]
    long_text = "\n\n".join(SAMPLE[i]["text"] for i in (6, 198, 240))  # ~4,700 chars: several chunks
    docs.append(_doc("long#0", "Three paragraphs", long_text, 10))
    docs.append(_doc("synthetic#1", None, "Delta tables keep every version of the data. "
                     "Readers see a consistent snapshot while writers append.", 11))
    docs.append(_doc("synthetic#2", "Chroma", "ChromaDB stores vectors with their documents and metadata.", 12))
    return docs


CORPUS = _corpus()
BY_ID = {d["doc_id"]: d for d in CORPUS}
CHANGED, RETITLED, SHRUNK, DELETED = SAMPLE[30]["doc_id"], SAMPLE[54]["doc_id"], "long#0", SAMPLE[126]["doc_id"]
ADDED = "added#1"


def incremental_corpus() -> list[dict[str, Any]]:
    """The corpus after one of each change: add, new text, new title/metadata only, shrink, delete."""
    docs = [dict(d) for d in CORPUS if d["doc_id"] != DELETED]
    by_id = {d["doc_id"]: d for d in docs}
    by_id[CHANGED]["text"] = SAMPLE[42]["text"] + " (revised)"
    by_id[RETITLED].update(title="Ming and Tibet", source="encyclopedia")
    by_id[SHRUNK]["text"] = SAMPLE[6]["text"]
    docs.append(_doc(ADDED, SAMPLE[36]["title"], SAMPLE[36]["text"], 13))
    return docs


# -- helpers ---------------------------------------------------------------------------
def make_cfg(root: Path, *overrides: str) -> RagConfig:
    return load_config(RagConfig, None, [f"tables.root={root / 'tables'}", f"chroma.path={root / 'chroma'}",
                                         f"documents.metadata=[{', '.join(META)}]", *overrides])


def tables_of(spark, cfg: RagConfig):
    from sparkrag.delta import open_tables

    return open_tables(spark, cfg.tables)


def write_docs(spark, cfg: RagConfig, docs: list[dict[str, Any]], schema: str = DOC_SCHEMA) -> None:
    tables_of(spark, cfg).write(spark.createDataFrame(docs, schema), cfg.names.documents, mode="overwrite")


def delta_chunks(spark, cfg: RagConfig) -> dict[str, dict[str, Any]]:
    rows = [r.asDict(recursive=True) for r in tables_of(spark, cfg).read(cfg.names.chunks).collect()]
    out = {r["chunk_id"]: r for r in rows}
    assert len(out) == len(rows), "chunk_id repeats in the chunks table"
    return out


def chroma_state(cfg: RagConfig) -> dict[str, dict[str, Any]]:
    from sparkrag.index.shards import open_index, resolve_shards

    got = open_index(cfg.chroma, resolve_shards(cfg.chroma)).get(include=["embeddings", "metadatas", "documents"])
    return {cid: {"embedding": np.asarray(e, dtype=np.float32), "metadata": m, "text": d}
            for cid, e, m, d in zip(got["ids"], got["embeddings"], got["metadatas"], got["documents"])}


def collection_id(cfg: RagConfig) -> str:
    from sparkrag.index.vectorstore import open_client

    return str(open_client(cfg.chroma).get_collection(cfg.chroma.collection, embedding_function=None).id)


def run_rows(spark, cfg: RagConfig, run_id: str | None = None) -> list[dict[str, Any]]:
    rows = [r.asDict(recursive=True) for r in tables_of(spark, cfg).read(cfg.names.runs).collect()]
    return [r for r in rows if run_id is None or r["run_id"] == run_id]


def expected_metadata(chunk: dict[str, Any]) -> dict[str, Any]:
    meta = {"doc_id": chunk["doc_id"], "chunk_index": chunk["chunk_index"], "doc_hash": chunk["doc_hash"]}
    if chunk["title"] is not None:
        meta["title"] = chunk["title"]
    meta.update({k: v for k, v in (chunk["metadata"] or {}).items() if v is not None})
    return meta


def assert_chroma_equals_table(chunks: dict[str, dict[str, Any]], chroma: dict[str, dict[str, Any]]) -> None:
    """Chroma holds exactly the table's chunks: ids, texts, metadata (doc_hash included), vectors."""
    assert set(chroma) == set(chunks)
    for cid, row in chunks.items():
        got = chroma[cid]
        assert got["text"] == row["text"], cid
        assert got["metadata"] == expected_metadata(row), cid
        np.testing.assert_allclose(got["embedding"], np.asarray(row["embedding"], np.float32), atol=TOL)


def by_doc(chunks: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(chunks.values(), key=lambda r: (r["doc_id"], r["chunk_index"])):
        out.setdefault(row["doc_id"], []).append(row)
    return out


def lexical_state(cfg: RagConfig) -> tuple[str, dict[str, dict[str, Any]]]:
    """The published lexical index: its shard folders and chunk_id -> text and metadata."""
    from sparkrag.index.lexical_shards import resolve_lexical

    refs, _ = resolve_lexical(cfg.lexical.path)
    index = refs.open_all()
    return ",".join(refs.dirs), {cid: {"text": t, "metadata": m} for cid, t, m in zip(index.ids, index.documents, index.metadatas)}


def assert_lexical_equals_table(chunks: dict[str, dict[str, Any]], lexical: dict[str, dict[str, Any]]) -> None:
    assert set(lexical) == set(chunks)
    for cid, row in chunks.items():
        assert (lexical[cid]["text"], lexical[cid]["metadata"]) == (row["text"], expected_metadata(row)), cid


def lexical_hits(cfg: RagConfig, text: str) -> set[str]:
    from sparkrag.index.lexical_shards import load_published

    index = load_published(cfg.lexical.path)
    return {m["doc_id"] for m in index.query([text], n_results=len(index))["metadatas"][0]}


@dataclass
class State:
    root: Path
    cfg: RagConfig
    record: dict[str, Any]
    chunks: dict[str, dict[str, Any]]
    chroma: dict[str, dict[str, Any]]
    lexical: tuple[str, dict[str, dict[str, Any]]]


def capture(spark, root: Path, cfg: RagConfig, record: dict[str, Any]) -> State:
    return State(root, cfg, record, delta_chunks(spark, cfg), chroma_state(cfg), lexical_state(cfg))


def clone(state: State, target: Path, *overrides: str, chroma: bool = True) -> RagConfig:
    """A copy of ``state``'s Delta tables (and Chroma directory) under ``target``."""
    shutil.copytree(state.root / "tables", target / "tables")
    if chroma:
        shutil.copytree(state.root / "chroma", target / "chroma")
        shutil.copytree(state.root / "chroma-lexical", target / "chroma-lexical")
    return make_cfg(target, *overrides)


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def baseline(spark, tmp_path_factory) -> State:
    root = tmp_path_factory.mktemp("ingest-baseline")
    cfg = make_cfg(root)
    write_docs(spark, cfg, CORPUS)
    return capture(spark, root, cfg, run_ingest(spark, cfg))


@pytest.fixture(scope="module")
def incremental(spark, baseline, tmp_path_factory) -> State:
    root = tmp_path_factory.mktemp("ingest-incremental")
    cfg = clone(baseline, root)
    write_docs(spark, cfg, incremental_corpus())
    return capture(spark, root, cfg, run_ingest(spark, cfg))


@pytest.fixture(scope="module")
def encode(minilm_path):
    """The same model in this one process (no Spark), for the reference vectors."""
    from sparkrag.config import EncoderConfig
    from sparkrag.embed import make_encode_fn

    return make_encode_fn(EncoderConfig(model=minilm_path), role="passage")()


# -- first run -------------------------------------------------------------------------
def test_first_run_writes_chunks_with_lineage_and_loads_chroma(spark, baseline, encode):
    cfg, chunks, record = baseline.cfg, baseline.chunks, baseline.record
    assert record["status"] == "succeeded"
    assert tables_of(spark, cfg).schema(cfg.names.chunks).fieldNames() == CHUNKS_SCHEMA.fieldNames()
    docs = by_doc(chunks)
    assert set(docs) == set(BY_ID)
    assert len(docs[SHRUNK]) >= 3, "the long document should span several chunks"
    assert record["counts"]["documents_new"] == len(CORPUS)
    assert record["counts"]["chunks_embedded"] == record["counts"]["chroma_loaded"] == len(chunks)
    for row in chunks.values():
        assert (row["run_id"], row["embedding_model"], row["embedding_dim"]) == (record["run_id"], MODEL, 384)
        assert isinstance(row["created_at"], dt.datetime)
        source = BY_ID[row["doc_id"]]
        assert source["text"][row["char_start"]:row["char_end"]] == row["text"]
        assert row["title"] == source["title"]
        # non-string metadata columns arrive as strings; a null value is kept as null
        assert row["metadata"] == {"source": source["source"], "published": source["published"].isoformat(),
                                   "year": None if source["year"] is None else str(source["year"])}
    assert_chroma_equals_table(chunks, baseline.chroma)
    assert_lexical_equals_table(chunks, baseline.lexical[1])
    assert record["counts"]["lexical_rebuilt"] == 1 and record["counts"]["lexical_chunks"] == len(chunks)
    assert record["outputs"]["lexical"] == str(baseline.root / "chroma-lexical")
    ids = sorted(chunks)
    reference = encode([chunks[c]["text"] for c in ids])
    np.testing.assert_allclose(np.asarray([chunks[c]["embedding"] for c in ids], np.float32), reference, atol=TOL)
    runs = run_rows(spark, cfg, record["run_id"])
    assert [r["status"] for r in runs] == ["succeeded"]
    assert runs[0]["counts"]["chunks_embedded"] == len(chunks)
    assert runs[0]["embedding_model"] == MODEL


# -- incremental runs ------------------------------------------------------------------
def test_incremental_plan_counts(incremental):
    counts = incremental.record["counts"]
    assert (counts["documents_new"], counts["documents_changed"], counts["documents_deleted"]) == (1, 3, 1)
    assert counts["documents_unchanged"] == len(CORPUS) - 4
    assert counts["chunks_embedded"] == sum(len(v) for k, v in by_doc(incremental.chunks).items()
                                            if k in (ADDED, CHANGED, RETITLED, SHRUNK))


def test_incremental_reembeds_only_changed_docs(baseline, incremental, encode):
    before, after, run_id = by_doc(baseline.chunks), by_doc(incremental.chunks), incremental.record["run_id"]
    touched = {ADDED, CHANGED, RETITLED, SHRUNK}
    for doc_id, rows in after.items():
        if doc_id in touched:
            assert {r["run_id"] for r in rows} == {run_id}, doc_id
        else:  # untouched documents keep their rows as they were
            assert [(r["chunk_id"], r["run_id"], r["created_at"]) for r in rows] == \
                   [(r["chunk_id"], r["run_id"], r["created_at"]) for r in before[doc_id]], doc_id
    assert set(after) == set(BY_ID) - {DELETED} | {ADDED}
    assert any("(revised)" in r["text"] for r in after[CHANGED])
    assert not {r["chunk_id"] for r in before[CHANGED]} & {r["chunk_id"] for r in after[CHANGED]}
    new = [r for r in incremental.chunks.values() if r["doc_id"] in (ADDED, CHANGED)]
    np.testing.assert_allclose(np.asarray([r["embedding"] for r in new], np.float32),
                               encode([r["text"] for r in new]), atol=TOL)
    assert_chroma_equals_table(incremental.chunks, incremental.chroma)


def test_incremental_run_keeps_the_lexical_index_in_step(baseline, incremental):
    assert incremental.lexical[0] != baseline.lexical[0].replace(str(baseline.root), str(incremental.root))
    assert_lexical_equals_table(incremental.chunks, incremental.lexical[1])
    assert incremental.record["counts"]["lexical_rebuilt"] == 1
    # a term only the deleted document had is gone; the added and revised texts are searchable
    assert lexical_hits(baseline.cfg, "Diamonds") == {DELETED}  # "Diamonds Are Forever": this doc only
    assert lexical_hits(incremental.cfg, "Diamonds") == set()
    assert ADDED in lexical_hits(incremental.cfg, SAMPLE[36]["text"][:200])
    assert CHANGED in lexical_hits(incremental.cfg, "revised")
    assert CHANGED not in lexical_hits(baseline.cfg, "revised")


def test_title_and_metadata_change_keeps_ids_and_updates_chroma(baseline, incremental):
    before, after = by_doc(baseline.chunks)[RETITLED], by_doc(incremental.chunks)[RETITLED]
    assert [r["chunk_id"] for r in after] == [r["chunk_id"] for r in before]
    assert all(r["doc_hash"] != before[0]["doc_hash"] for r in after)
    for row in after:
        meta = incremental.chroma[row["chunk_id"]]["metadata"]
        assert (meta["title"], meta["source"], meta["doc_hash"]) == ("Ming and Tibet", "encyclopedia", row["doc_hash"])
        assert baseline.chroma[row["chunk_id"]]["metadata"]["title"] != "Ming and Tibet"


def test_shrunk_and_deleted_docs_leave_both_stores(baseline, incremental):
    before, after = by_doc(baseline.chunks), by_doc(incremental.chunks)
    assert 1 <= len(after[SHRUNK]) < len(before[SHRUNK])
    assert [r["chunk_index"] for r in after[SHRUNK]] == list(range(len(after[SHRUNK])))
    gone = {r["chunk_id"] for r in before[SHRUNK] + before[DELETED]} - {r["chunk_id"] for r in after[SHRUNK]}
    assert gone and not gone & set(incremental.chunks) and not gone & set(incremental.chroma)
    assert DELETED not in after
    assert not [m for m in incremental.chroma.values() if m["metadata"]["doc_id"] == DELETED]


def test_noop_rerun_embeds_nothing_and_writes_only_a_run_row(spark, incremental, capsys):
    from sparkrag.jobs.ingest import main

    cfg = incremental.cfg
    tables = tables_of(spark, cfg)
    versions = {t: tables.version(t) for t in (cfg.names.chunks, cfg.names.runs)}
    argv = ["--set", f"tables.root={cfg.tables.root}", "--set", f"chroma.path={cfg.chroma.path}",
            "--set", f"documents.metadata=[{', '.join(META)}]", "--log-level", "WARNING"]
    assert main(argv, spark=spark) == 0  # the console-script entry point: an exit status
    record = json.loads(capsys.readouterr().out)
    counts = record["counts"]
    assert counts["chunks_embedded"] == counts["stale_pairs"] == counts["documents_new"] == 0
    assert counts["documents_changed"] == counts["chroma_loaded"] == counts["chroma_deleted"] == 0
    assert tables.version(cfg.names.chunks) == versions[cfg.names.chunks]
    assert tables.version(cfg.names.runs) == versions[cfg.names.runs] + 1
    assert not tables.exists(cfg.names.rejects)
    assert [r["status"] for r in run_rows(spark, cfg, record["run_id"])] == ["succeeded"]
    assert set(chroma_state(cfg)) == set(incremental.chunks)
    assert counts["lexical_rebuilt"] == 0 and lexical_state(cfg)[0] == incremental.lexical[0]


def test_job_full_refresh_reembeds_everything_and_rebuilds_collection(spark, baseline, tmp_path, capsys):
    from sparkrag.jobs.ingest import run

    cfg = clone(baseline, tmp_path)
    old_collection = collection_id(cfg)
    yaml_path = tmp_path / "ingest.yaml"
    yaml_path.write_text(f"tables:\n  root: {tmp_path / 'tables'}\ndocuments:\n  metadata: [{', '.join(META)}]\n"
                         "chroma:\n  path: /nonexistent/overridden/by/flag\n", encoding="utf-8")
    record = run(["--config", str(yaml_path), "--chroma-path", str(tmp_path / "chroma"),
                   "--set", "ingest.max_document_chars=1000000", "--full-refresh", "--log-level", "WARNING"], spark=spark)
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_id"] == record["run_id"] and printed["status"] == "succeeded"
    config = json.loads(run_rows(spark, cfg, record["run_id"])[0]["config_json"])
    assert config["ingest"] == {**config["ingest"], "full_refresh": True, "max_document_chars": 1000000}
    assert config["chroma"]["path"] == str(tmp_path / "chroma")
    chunks = delta_chunks(spark, cfg)
    assert set(chunks) == set(baseline.chunks)
    assert {r["run_id"] for r in chunks.values()} == {record["run_id"]}
    assert record["counts"]["chunks_embedded"] == record["counts"]["chroma_loaded"] == len(chunks)
    assert collection_id(cfg) != old_collection
    assert_chroma_equals_table(chunks, chroma_state(cfg))


def test_changed_chunk_settings_reembed_everything(spark, baseline, tmp_path):
    cfg = clone(baseline, tmp_path, "chunking.max_tokens=64", "chunking.overlap_tokens=8")
    record = run_ingest(spark, cfg)
    assert record["counts"]["documents_changed"] == len(CORPUS)
    chunks = delta_chunks(spark, cfg)
    assert {r["run_id"] for r in chunks.values()} == {record["run_id"]}
    assert len(chunks) > len(baseline.chunks)
    assert max(r["token_count"] for r in chunks.values()) <= 64 + 2  # content + [CLS]/[SEP]
    assert_chroma_equals_table(chunks, chroma_state(cfg))


# -- bad input -------------------------------------------------------------------------
def test_missing_column_fails_before_any_work(spark, tmp_path):
    cfg = make_cfg(tmp_path)
    write_docs(spark, cfg, [{"doc_id": "a", "body": "some text"}], "doc_id string, body string")
    with pytest.raises(SchemaError, match=r"missing column\(s\) 'text' \(option documents.text\)") as err:
        run_ingest(spark, cfg)
    assert "'source' (option documents.metadata)" in str(err.value)
    tables = tables_of(spark, cfg)
    assert not tables.exists(cfg.names.chunks) and not tables.exists(cfg.names.rejects)
    assert not os.path.exists(cfg.chroma.path)
    failed = run_rows(spark, cfg)
    assert [r["status"] for r in failed] == ["failed"] and "SchemaError" in failed[0]["error"]


@pytest.mark.parametrize("schema,meta,match", [
    ("doc_id string, title string, text int", "[]", r"column 'text' \(documents.text\) must be a string, got int"),
    ("doc_id string, title string, text string, tags array<string>", "[tags]", r"column 'tags' is array<string>"),
])
def test_unusable_column_type_fails_naming_it(spark, tmp_path, schema, meta, match):
    cfg = make_cfg(tmp_path, f"documents.metadata={meta}")
    row = {"doc_id": "a", "title": "t", "text": 3} if "text int" in schema else \
        {"doc_id": "a", "title": "t", "text": "x", "tags": ["p", "q"]}
    write_docs(spark, cfg, [row], schema)
    with pytest.raises(SchemaError, match=match):
        run_ingest(spark, cfg)
    assert not tables_of(spark, cfg).exists(cfg.names.chunks) and not os.path.exists(cfg.chroma.path)


def test_bad_rows_go_to_rejects_and_the_rest_is_ingested(spark, baseline, tmp_path):
    cfg = clone(baseline, tmp_path, "ingest.max_document_chars=5000")
    docs = [dict(d) for d in CORPUS]
    turned_bad = SAMPLE[0]["doc_id"]
    next(d for d in docs if d["doc_id"] == turned_bad)["text"] = None  # was good, now bad
    docs += [_doc("null#1", "t", None, 20), _doc("blank#1", "t", " \n\t\u00a0 ", 21),  # blank: Unicode spaces too
             _doc("huge#1", "t", "word " * 1200, 22), _doc("dup#1", "t", "first copy", 23),
             _doc("dup#1", "t", "second copy", 24),
             _doc("fresh#1", "Fresh", "A new, valid document arrives with the bad ones.", 25)]
    write_docs(spark, cfg, docs)
    record = run_ingest(spark, cfg)
    assert record["status"] == "succeeded" and record["counts"]["rejects"] == 6
    rejects = [r.asDict() for r in tables_of(spark, cfg).read(cfg.names.rejects).collect()]
    got = sorted((r["row_key"], r["column"], r["reason"].split(":")[0].split(" (")[0]) for r in rejects)
    assert got == sorted([(turned_bad, "text", "null or empty text"), ("null#1", "text", "null or empty text"),
                          ("blank#1", "text", "null or empty text"), ("huge#1", "text", "document too large"),
                          ("dup#1", "doc_id", "duplicate document id"), ("dup#1", "doc_id", "duplicate document id")])
    assert all(r["run_id"] == record["run_id"] and r["job"] == "ingest" and r["row_json"] for r in rejects)
    huge = next(r for r in rejects if r["row_key"] == "huge#1")
    assert "6000 chars > ingest.max_document_chars=5000" in huge["reason"]
    chunks = delta_chunks(spark, cfg)
    docs_after = by_doc(chunks)
    assert set(docs_after) == set(BY_ID) | {"fresh#1"}
    # the document that turned bad keeps its old chunks in both stores
    kept = [r["chunk_id"] for r in by_doc(baseline.chunks)[turned_bad]]
    assert [r["chunk_id"] for r in docs_after[turned_bad]] == kept
    assert_chroma_equals_table(chunks, chroma_state(cfg))


# -- crash and rerun -------------------------------------------------------------------
def test_rerun_after_crash_converges_to_clean_run(spark, baseline, incremental, tmp_path):
    """Crash after the Delta append (stale pairs still there, Chroma not synced, and a
    half-finished Chroma load that lost some vectors); the rerun must end where a clean run did."""
    from sparkrag.pipelines import ingest
    from sparkrag.embed import encoder_info
    from sparkrag.pipelines.runs import RunRecorder
    from sparkrag.index.vectorstore import open_client

    cfg = clone(baseline, tmp_path)
    # The lost vectors below are a pre-shard, in-place load cut short; a rebuild (not a delta,
    # which trusts the immutable base it extends) diffs against what the shard really holds.
    cfg = dataclasses.replace(cfg, chroma=dataclasses.replace(cfg.chroma, compact_at=0.0))
    write_docs(spark, cfg, incremental_corpus())
    tables = tables_of(spark, cfg)
    model_id, dim = encoder_info(cfg.encoder)
    valid, bad = ingest.prepare_documents(tables.read(cfg.names.documents), cfg, table=cfg.names.documents)
    existing, _, _ = ingest._existing_pairs(tables, cfg)
    plan = ingest._plan(cfg, valid, bad, existing)
    ingest._embed_and_append(spark, tables, cfg, RunRecorder("ingest", cfg, "crashed", embedding_model=model_id),
                             plan["to_embed"], model_id, dim)
    # old and new rows of the retitled document now share chunk ids: the table is mid-change
    crashed = tables.read(cfg.names.chunks).select("doc_id", "run_id").collect()
    assert {r.doc_id for r in crashed if r.run_id == "crashed"} == {ADDED, CHANGED, RETITLED, SHRUNK}
    assert len(crashed) > len(baseline.chunks)
    collection = open_client(cfg.chroma).get_collection(cfg.chroma.collection, embedding_function=None)
    lost = sorted(baseline.chunks)[:3]
    collection.delete(ids=lost)  # a load interrupted half way

    record = run_ingest(spark, cfg)
    assert record["counts"]["chunks_embedded"] == 0  # the crashed run's chunks are reused
    assert record["counts"]["stale_pairs"] == 4  # old pairs of the changed, retitled, shrunk and deleted docs
    chunks = delta_chunks(spark, cfg)
    assert set(chunks) == set(incremental.chunks)
    for cid, row in chunks.items():
        clean = incremental.chunks[cid]
        assert (row["doc_hash"], row["text"], row["metadata"]) == (clean["doc_hash"], clean["text"], clean["metadata"])
        np.testing.assert_allclose(row["embedding"], clean["embedding"], atol=TOL)
    chroma = chroma_state(cfg)
    assert {k: v["metadata"] for k, v in chroma.items()} == {k: v["metadata"] for k, v in incremental.chroma.items()}
    assert_chroma_equals_table(chunks, chroma)


@pytest.mark.slow
def test_rerun_after_killed_job_converges_to_clean_run(spark, baseline, incremental, tmp_path):
    """The real thing: the job in its own process, SIGKILLed right after its Delta append commits."""
    import signal
    import subprocess
    import sys
    import time

    from deltalake import DeltaTable

    cfg = clone(baseline, tmp_path)
    write_docs(spark, cfg, incremental_corpus())
    chunks_path = tables_of(spark, cfg).location(cfg.names.chunks)
    version = DeltaTable(chunks_path).version()
    yaml_path = tmp_path / "ingest.yaml"
    yaml_path.write_text(f"tables: {{root: {tmp_path / 'tables'}}}\nchroma: {{path: {tmp_path / 'chroma'}}}\n"
                         f"documents: {{metadata: [{', '.join(META)}]}}\n", encoding="utf-8")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs/ingest.py"), "--config", str(yaml_path)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while DeltaTable(chunks_path).version() == version:
            assert proc.poll() is None and time.monotonic() < deadline, "the job ended before its append"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job, its JVM and its Python workers
        proc.wait()
    assert DeltaTable(chunks_path).version() == version + 1, "killed after the append, before the stale delete"
    record = run_ingest(spark, cfg)
    assert record["status"] == "succeeded"
    chunks = delta_chunks(spark, cfg)
    assert set(chunks) == set(incremental.chunks)
    for cid, row in chunks.items():
        np.testing.assert_allclose(row["embedding"], incremental.chunks[cid]["embedding"], atol=TOL)
        assert row["doc_hash"] == incremental.chunks[cid]["doc_hash"]
    assert_chroma_equals_table(chunks, chroma_state(cfg))


# -- encoder mismatch ------------------------------------------------------------------
def test_encoder_mismatch_refused_before_embedding(spark, baseline, minilm_path, tmp_path):
    other = tmp_path / "other-encoder"
    os.symlink(minilm_path, other)
    cfg = clone(baseline, tmp_path, f"encoder.model={other}")
    tables = tables_of(spark, cfg)
    version = tables.version(cfg.names.chunks)
    with pytest.raises(VectorStoreError) as err:
        run_ingest(spark, cfg)
    assert MODEL in str(err.value) and str(other) in str(err.value)
    assert tables.version(cfg.names.chunks) == version
    failed = [r for r in run_rows(spark, cfg) if r["status"] == "failed"]
    assert len(failed) == 1 and "VectorStoreError" in failed[0]["error"] and str(other) in failed[0]["error"]
    assert "chunk_embed_write" not in (failed[0]["stage_seconds"] or {})
    assert set(chroma_state(make_cfg(tmp_path))) == set(baseline.chunks)


# -- server mode -----------------------------------------------------------------------
def test_server_mode_executors_load_the_table(spark, baseline, chroma_server, tmp_path):
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    cfg = clone(baseline, tmp_path, "chroma.mode=server", f"chroma.host={chroma_server.host}",
                f"chroma.port={chroma_server.port}", f"chroma.collection={name}", chroma=False)
    record = run_ingest(spark, cfg)
    counts = record["counts"]
    assert counts["chunks_embedded"] == 0 and counts["chroma_loaded"] == len(baseline.chunks)
    assert record["outputs"]["chroma"] == f"server:{chroma_server.host}/{name}"
    assert_chroma_equals_table(delta_chunks(spark, cfg), chroma_state(cfg))


# -- job entry point -------------------------------------------------------------------
def test_help_lists_every_option(capsys):
    from job_cli import help_options

    from sparkrag.jobs.ingest import build_parser, main

    assert {"--config", "--set", "--documents", "--chunks-table", "--collection", "--chroma-path",
            "--full-refresh", "--log-level"} <= help_options(main, build_parser, capsys)


@pytest.mark.parametrize("limit", [100_000, 0], ids=["broadcast", "window"])
def test_repeated_document_ids_are_found_alike_by_broadcast_and_by_window(spark, monkeypatch, limit):
    """Repeated ids come from an aggregate of the ids joined back by broadcast; past the broadcast limit, from
    a window over every row. Both reject the same rows with the same reasons."""
    from sparkrag.config import RagConfig
    from sparkrag.pipelines import ingest

    monkeypatch.setattr(ingest, "MAX_BROADCAST_DUPLICATES", limit)
    rows = [("a", "T", "x"), ("a", "T", "y"), ("b", "T", "z"), (None, "T", "w"), (None, "T", "v"),
            *[("c", "T", "u")] * 3, ("d", "T", "  ")]
    checked = ingest.check_documents(spark.createDataFrame(rows, "doc_id string, title string, text string"),
                                     RagConfig(), table="docs")
    assert checked.columns == ["doc_id", "title", "text", "_reason", "_column", "doc_hash"]
    got = sorted(((r["doc_id"] or ""), r["_reason"] or "", r["_column"] or "", r["doc_hash"] is not None)
                 for r in checked.collect())
    assert got == sorted([*[("a", "duplicate document id (2 rows)", "doc_id", False)] * 2, ("b", "", "", True),
                          *[("", "null or empty document id", "doc_id", False)] * 2,
                          *[("c", "duplicate document id (3 rows)", "doc_id", False)] * 3,
                          ("d", "null or empty text", "text", False)])
