"""Batched greedy generation with a real (tiny, random) Llama, and the extractive answerer with MiniLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_llama import EOS, EOT, tiny_llama_path  # noqa: F401  (tiny_llama_path is a session fixture)

from sparkrag.config import EncoderConfig, GeneratorConfig
from sparkrag.generation.extractive import make_extractive_fn, split_sentences
from sparkrag.generation.generate import Generation, make_generate_fn
from sparkrag.generation.prompt import ABSTAIN_TEXT, encode_prompt, format_prompt

MAX_NEW = 10
SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample"
QUESTIONS = [
    "Who?",
    "When did Beyonce release her first solo album and who managed Destiny's Child at the time?",
    "Where is Houston?",
    "What is the capital of France, and what river flows through it on its way to the sea?",
    "x",
]


def _cfg(model: str, **overrides) -> GeneratorConfig:
    return GeneratorConfig(kind="chatqa", model=model, max_new_tokens=MAX_NEW, batch_size=2, device="cpu", **overrides)


@pytest.fixture(scope="module")
def generator(tiny_llama_path):
    return make_generate_fn(_cfg(tiny_llama_path))()


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    # Different lengths, so batches of 2 mix lengths and need left padding.
    return [format_prompt(q, [], ["Beyoncé grew up in Houston, Texas."] * (i + 1)) for i, q in enumerate(QUESTIONS)]


def _greedy_reference(model, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding by plain forward passes: no padding, no cache, no generate()."""
    import torch

    out: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            out.append(int(logits.argmax()))
    return out


@pytest.fixture(scope="module")
def references(generator, prompts) -> list[list[int]]:
    return [_greedy_reference(generator.model, encode_prompt(generator.tokenizer, p), MAX_NEW) for p in prompts]


def test_loads_like_chatqa(generator, tiny_llama_path):
    import torch

    tok = generator.tokenizer
    assert generator.model.dtype == torch.float32 and not generator.model.training
    assert tok.padding_side == "left" and tok.pad_token == EOS  # Llama-3 has no pad token
    assert generator.eos_token_ids == [tok.convert_tokens_to_ids(EOS), tok.convert_tokens_to_ids(EOT)]
    gc = generator.generation_config
    from transformers import GenerationConfig

    # No sampling settings merged in from the model: the library's defaults (None in 5.x, 1.0 in 4.x).
    defaults = GenerationConfig()
    assert (gc.do_sample, gc.max_new_tokens, gc.temperature, gc.top_p) == (False, MAX_NEW, defaults.temperature,
                                                                           defaults.top_p)
    assert make_generate_fn(_cfg(tiny_llama_path))() is generator  # cached per worker


def test_batched_generation_equals_greedy_reference_in_input_order(generator, prompts, references):
    results = generator(prompts)
    assert len(results) == len(prompts)
    for prompt, ref, result in zip(prompts, references, results):
        assert result.error is None
        assert result.prompt_tokens == len(encode_prompt(generator.tokenizer, prompt))
        assert result.completion_tokens == MAX_NEW  # a random model never says eos here
        assert result.text == generator.tokenizer.decode(ref, skip_special_tokens=True).strip()
    assert len({r.text for r in results}) > 1  # the prompts lead to different answers
    assert [generator([p])[0] for p in prompts] == results  # alone = batched: left padding is right


def test_generation_stops_at_a_stop_token(generator, prompts, references, tiny_llama_path, tmp_path):
    ref = references[1]
    k = next(k for k in range(2, MAX_NEW) if ref[k] not in ref[:k])
    stopped = tmp_path / "stop-model"
    shutil.copytree(tiny_llama_path, stopped)
    # The model's generation_config.json eos list is honoured: make ref[k] a stop token.
    config_path = stopped / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [*config["eos_token_id"], ref[k]]
    config_path.write_text(json.dumps(config))
    result = make_generate_fn(_cfg(str(stopped)))()(prompts)[1]
    assert result.completion_tokens == k + 1  # the stop token counts, nothing after it
    assert result.text == generator.tokenizer.decode(ref[:k], skip_special_tokens=True).strip()


def test_a_bad_prompt_fails_alone(generator, prompts):
    too_long = "Houston " * 3000  # past the tiny model's 2,048 positions
    results = generator([prompts[0], None, too_long, prompts[2]])
    assert results[1].text is None and "prompt string" in results[1].error
    assert results[2].text is None and "max_position_embeddings 2048" in results[2].error
    assert results[0] == generator([prompts[0]])[0] and results[3] == generator([prompts[2]])[0]
    assert generator([]) == []


def test_split_sentences():
    text = 'Dr. J. Smith came at 5 p.m. on Friday. "He left!" Then (in 2001) he returned?\nNew line'
    assert split_sentences(text) == [
        "Dr. J. Smith came at 5 p.m. on Friday.",
        '"He left!"',
        "Then (in 2001) he returned?",
        "New line",
    ]


@pytest.fixture(scope="module")
def sample():
    docs = {d["doc_id"]: d["text"] for d in map(json.loads, open(SAMPLE / "documents.jsonl", encoding="utf-8"))}
    questions = {q["question_id"]: q for q in map(json.loads, open(SAMPLE / "questions.jsonl", encoding="utf-8"))}
    return docs, questions


@pytest.fixture(scope="module")
def extractive(minilm_path):
    return make_extractive_fn(EncoderConfig(model=minilm_path, device="cpu"), GeneratorConfig())()


@pytest.mark.parametrize(
    "question_id",
    ["56cc239e6d243a140015eeb7", "56cc55856d243a140015ef0c", "56cdaf0362d2951400fa680a", "56ce59c8aab44d1400b886dc"],
)
def test_extractive_picks_the_sentence_with_the_answer(extractive, sample, question_id):
    docs, questions = sample
    q = questions[question_id]
    article, n = q["doc_id"].rsplit("#", 1)
    contexts = [docs[f"{article}#{(int(n) + 1) % 25}"], docs[q["doc_id"]], docs[f"{article}#{(int(n) + 2) % 25}"]]
    [result] = extractive([(q["question"], contexts)])
    assert result.error is None
    assert result.text in split_sentences(docs[q["doc_id"]])  # one whole sentence of the gold paragraph
    assert any(answer in result.text for answer in q["answers"])
    tokenizer = extractive.tokenizer
    assert result.completion_tokens == len(tokenizer(result.text, add_special_tokens=False)["input_ids"])
    assert result.prompt_tokens > len(tokenizer(" ".join(contexts), add_special_tokens=False)["input_ids"]) // 2


def test_extractive_abstains_and_fails_rows_alone(extractive, sample):
    docs, _ = sample
    beyonce = [docs["Beyoncé#0"], docs["Beyoncé#1"]]
    results = extractive(
        [
            ("What is the boiling point of liquid nitrogen?", beyonce),
            (None, beyonce),
            ("Where did Beyoncé grow up?", []),
            ("Which Beyoncé album earned five Grammy Awards?", beyonce),
        ]
    )
    assert results[0] == Generation(ABSTAIN_TEXT, prompt_tokens=results[0].prompt_tokens, completion_tokens=0)
    assert results[1].text is None and "question" in results[1].error
    assert results[2].text == ABSTAIN_TEXT and results[2].prompt_tokens > 0
    assert "Dangerously in Love" in results[3].text


def test_extractive_cuts_sentences_longer_than_the_encoder_takes(extractive):
    run_on = " ".join(f"item{i} and" for i in range(300))  # ~900 tokens, no sentence end
    [result] = extractive([("What is the capital of France?", [run_on, "Paris is the capital of France."])])
    assert result.error is None and result.text == "Paris is the capital of France."
    assert result.prompt_tokens > 900


def test_extractive_joins_best_sentences_in_context_order(minilm_path):
    cfg = GeneratorConfig(extractive_sentences=2, extractive_threshold=0.2)
    answer = make_extractive_fn(EncoderConfig(model=minilm_path, device="cpu"), cfg)()
    context = "Paris is the capital of France. Bananas are yellow. The capital of France has about two million people."
    [result] = answer([("What is the capital of France?", [context])])
    assert result.text == "Paris is the capital of France. The capital of France has about two million people."


def test_factories_pickle_small_for_executors(tiny_llama_path, minilm_path):
    from pyspark import cloudpickle

    for factory in (
        make_generate_fn(_cfg(tiny_llama_path)),
        make_extractive_fn(EncoderConfig(model=minilm_path), GeneratorConfig()),
    ):
        payload = cloudpickle.dumps(factory)
        assert len(payload) < 20_000  # configs travel, models do not
        assert callable(cloudpickle.loads(payload))
