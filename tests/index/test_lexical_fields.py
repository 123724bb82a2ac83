"""What the BM25 index holds (issue #16): the title field, accent folding, stemming; real bm25s.

Also: the settings survive save/load, an index of an older format is refused with a message
to rerun the ingest job, and changing one rebuilds the published index (sync_lexical_index).
"""

from __future__ import annotations

import json
import os

import pytest

from sparkrag.config import LexicalConfig
from sparkrag.errors import ConfigError, VectorStoreError
from sparkrag.index.lexical import LexicalIndex, fold_accents
from sparkrag.index.lexical_shards import LexicalStore, load_published, sync_lexical_index

IDS = ["b0", "b1", "p0", "n0"]
TEXTS = [
    "She released her debut album Dangerously in Love in 2003.",
    "Her husband is the rapper Jay-Z; they married in 2008.",
    "The pump was releasing water into the tank.",
    "Beyoncé performed at the Super Bowl halftime show.",
]
METAS = [{"doc_id": "beyonce#0", "title": "Beyoncé"}, {"doc_id": "beyonce#1", "title": "Beyoncé"},
         {"doc_id": "pump#0", "title": "Water pump"}, {"doc_id": "news#0", "title": "Sports news"}]


def build(**settings):
    return LexicalIndex.build(IDS, TEXTS, METAS, LexicalConfig(**settings))


def ids(index, question, n=4, **kw):
    return index.query([question], n_results=n, **kw)["ids"][0]


def test_title_field_finds_and_ranks_chunks_by_their_article():
    question = "Who did Beyonce marry?"  # "marry" stems like "married"; "Beyonce" is only in titles of b0/b1
    with_title = build()
    found = ids(with_title, question)
    assert found[0] == "b1" and "b0" in found  # b0 matches on its title alone
    assert "b0" not in ids(build(title_weight=0.0), question)
    assert "b0" not in ids(with_title.with_title_weight(0.0), question)  # a view of the same arrays
    scores = with_title.query([question], n_results=4)["scores"][0]
    plain = with_title.with_title_weight(0.0).query([question], n_results=4)["scores"][0]
    assert scores[0] > plain[0] > 0  # the title adds to the text's score
    heavy = with_title.with_title_weight(3.0).query([question], n_results=4)["scores"][0]
    assert heavy[0] > scores[0]
    with pytest.raises(ConfigError, match="lexical.title_weight: expected >= 0"):
        build(title_weight=-1.0)


def test_accent_folding_matches_unaccented_questions():
    assert fold_accents("Beyoncé Frédéric Chopin naïve") == "Beyonce Frederic Chopin naive"
    assert fold_accents("plain") == "plain"
    question = "Who is Beyonce?"
    assert ids(build(title_weight=0.0), question) == ["n0"]
    assert ids(build(title_weight=0.0, fold_accents=False), question) == []
    assert ids(build(title_weight=0.0), "Beyoncé halftime")[0] == "n0"  # accented queries fold too


def test_stemming_matches_word_forms():
    question = "When was the album release?"
    stemmed = ids(build(title_weight=0.0), question)
    assert stemmed == ["b0", "p0"]  # "album" + "released", then "releasing"
    assert ids(build(title_weight=0.0, stemmer=""), question) == ["b0"]  # only "album" matches
    with pytest.raises(ConfigError, match="lexical.stemmer: unknown language 'klingon'"):
        build(stemmer="klingon")


def test_settings_survive_save_and_load(tmp_path):
    index = build(title_weight=2.0)
    index.save(str(tmp_path / "v"))
    assert os.path.exists(tmp_path / "v" / "postings.npz")
    loaded = LexicalIndex.load(str(tmp_path / "v"))
    questions = ["Who did Beyonce marry?", "releasing water", "the of"]
    assert loaded.query(questions, n_results=4) == index.query(questions, n_results=4)
    assert loaded.settings["title_weight"] == 2.0 and loaded.settings["stemmer"] == "english"
    untitled = LexicalIndex.build(IDS, TEXTS, [{"doc_id": m["doc_id"]} for m in METAS], LexicalConfig())
    assert untitled.title.terms == []  # no titles: an empty title field, queries work
    untitled.save(str(tmp_path / "u"))
    assert ids(LexicalIndex.load(str(tmp_path / "u")), "album") == ["b0"]


def test_an_index_of_an_older_format_is_refused_by_name(tmp_path):
    build().save(str(tmp_path / "v2"))
    with open(tmp_path / "v2" / "settings.json", "w", encoding="utf-8") as fh:  # as format 2 (bm25s arrays) wrote it
        json.dump({"k1": 1.5, "b": 0.75, "stopwords": "en", "stemmer": "english", "format": 2}, fh)
    with pytest.raises(VectorStoreError, match=r"v2 is missing, incomplete or outdated \(format 2.*rerun the ingest"):
        LexicalIndex.load(str(tmp_path / "v2"))


def test_changing_what_is_indexed_rebuilds_the_published_index(spark, tmp_path):
    rows = [(i, t, m["doc_id"], 0, m["title"], None, f"h{i}", [1.0, 0.0]) for i, t, m in zip(IDS, TEXTS, METAS)]
    chunks = spark.createDataFrame(rows, "chunk_id string, text string, doc_id string, chunk_index int, "
                                         "title string, metadata map<string,string>, doc_hash string, "
                                         "embedding array<float>")
    path = str(tmp_path / "lexical")
    assert sync_lexical_index(chunks, LexicalConfig(path=path), chunks_version=1)["rebuilt"] == 1
    assert ids(load_published(path), "Who did Beyonce marry?")[0] == "b1"  # titles come from the chunks table
    assert sync_lexical_index(chunks, LexicalConfig(path=path), chunks_version=1)["rebuilt"] == 0
    for changed in ({"stemmer": ""}, {"fold_accents": False}, {"title_weight": 0.5}):
        assert sync_lexical_index(chunks, LexicalConfig(path=path, **changed), chunks_version=1)["rebuilt"] == 1
        settings = json.loads(LexicalStore(path).read_manifest().settings)
        assert settings[next(iter(changed))] == next(iter(changed.values()))
    assert load_published(path).settings["title_weight"] == 0.5
