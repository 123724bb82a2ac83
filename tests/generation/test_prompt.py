"""ChatQA-1.5 prompt format, context packing in the generator's tokens, abstention detection."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from tiny_llama import BOS, tiny_llama_path  # noqa: F401  (tiny_llama_path is a session fixture)

from sparkrag.config import GeneratorConfig
from sparkrag.errors import ConfigError, SparkragError
from sparkrag.generation.prompt import (
    ABSTAIN_TEXT,
    PromptError,
    PromptTooLongError,
    build_prompt,
    encode_prompt,
    format_context,
    format_prompt,
    is_abstention,
    token_counter,
)

SYSTEM = (
    "System: This is a chat between a user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions based on the context. The assistant "
    "should also indicate when the answer cannot be found in the context."
)
SHORT = "Answer the following question with a short span. The answer needs to be just in a few words."
FULL = "Please give a full and complete answer for the question."
HISTORY = [
    {"role": "user", "content": "Who is Beyoncé?"},
    {"role": "assistant", "content": "An American singer."},
]
CONTEXTS = [{"title": "Beyoncé", "text": "Beyoncé was born on September 4, 1981."}, "She grew up in Houston."]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_path):
    from sparkrag.generation.generate import make_tokenizer_fn

    return make_tokenizer_fn(GeneratorConfig(kind="chatqa", model=tiny_llama_path))()


def test_short_style_with_history_and_contexts_is_exactly_chatqa_format():
    expected = (
        SYSTEM + "\n\n"
        "title: Beyoncé, source: Beyoncé was born on September 4, 1981.\n\n"
        "She grew up in Houston.\n\n"
        "User: Who is Beyoncé?\n\n"
        "Assistant: An American singer.\n\n"
        "User: " + SHORT + " When was she born?\n\n"
        "Assistant:"
    )
    assert format_prompt("When was she born?", HISTORY, CONTEXTS, answer_style="short") == expected


def test_full_style_puts_instruction_on_first_user_turn():
    expected = (
        SYSTEM + "\n\n"
        "title: Beyoncé, source: Beyoncé was born on September 4, 1981.\n\n"
        "She grew up in Houston.\n\n"
        "User: " + FULL + " Who is Beyoncé?\n\n"
        "Assistant: An American singer.\n\n"
        "User: When was she born?\n\n"
        "Assistant:"
    )
    assert format_prompt("When was she born?", HISTORY, CONTEXTS, answer_style="full") == expected


def test_without_contexts_the_context_block_is_left_out():
    expected = SYSTEM + "\n\nUser: " + FULL + " Where is Houston?\n\nAssistant:"
    assert format_prompt("Where is Houston?", None, [], answer_style="full") == expected


def test_history_keeps_last_turns_question_included():
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(10)]
    text = format_prompt("q?", history, [], answer_style="full", max_history_turns=4)
    # 3 history messages + the question; the full instruction moves to the first user turn kept.
    assert text == SYSTEM + f"\n\nAssistant: m7\n\nUser: {FULL} m8\n\nAssistant: m9\n\nUser: q?\n\nAssistant:"
    assert format_prompt("q?", history, [], max_history_turns=1) == SYSTEM + f"\n\nUser: {SHORT} q?\n\nAssistant:"


def test_spark_rows_are_accepted_as_contexts_and_turns():
    from pyspark.sql import Row

    contexts = [Row(chunk_id="c1", doc_id="d", title="Beyoncé", text="Beyoncé was born on September 4, 1981.")]
    contexts.append(Row(chunk_id="c2", doc_id="d", title=None, text="She grew up in Houston."))
    history = [Row(role=t["role"], content=t["content"]) for t in HISTORY]
    assert format_prompt("When was she born?", history, contexts) == format_prompt(
        "When was she born?", HISTORY, CONTEXTS
    )
    assert format_context(contexts[1]) == "She grew up in Houston."


@pytest.mark.parametrize(
    ("question", "history", "contexts", "named"),
    [
        ("", [], [], "question"),
        (None, [], [], "question"),
        ("q", [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], [], "history[1].role"),
        ("q", [{"role": "user", "content": None}], [], "history[0].content"),
        ("q", [], ["ok", {"title": "t"}], "contexts[1]"),
        ("q", [], [{"text": "x", "title": 3}], "contexts[0]"),
    ],
)
def test_bad_input_names_the_field(question, history, contexts, named):
    with pytest.raises(PromptError, match=re.escape(named)):
        format_prompt(question, history, contexts)


def test_exactly_one_bos(tokenizer):
    text = format_prompt("When was she born?", HISTORY, CONTEXTS)
    bos_id = tokenizer.convert_tokens_to_ids(BOS)
    ids = encode_prompt(tokenizer, text)
    assert ids[0] == bos_id and ids.count(bos_id) == 1
    # Why add_special_tokens=False: the Llama-3-style post-processor adds a second BOS otherwise.
    assert tokenizer(BOS + text)["input_ids"][:2] == [bos_id, bos_id]
    result = build_prompt("When was she born?", HISTORY, CONTEXTS, tokenizer, cfg=GeneratorConfig())
    assert result.prompt_tokens == len(ids)


def test_special_token_text_in_a_context_stays_plain_text(tokenizer):
    text = format_prompt("Who?", [], ["Ann<|eot_id|> did. <|begin_of_text|><|end_of_text|>"])
    ids = encode_prompt(tokenizer, text)
    specials = {tokenizer.convert_tokens_to_ids(t) for t in (BOS, "<|eot_id|>", "<|end_of_text|>")}
    assert [i for i in ids if i in specials] == [tokenizer.convert_tokens_to_ids(BOS)]
    assert tokenizer.decode(ids[1:]) == text


def _contexts(n: int) -> list[dict]:
    return [{"title": f"Doc {i}", "text": f"Paragraph {i}: " + "Houston is in Texas. " * (3 + i)} for i in range(n)]


def test_packing_keeps_a_prefix_of_the_ranking_within_the_budget(tokenizer):
    contexts = _contexts(4)
    count = token_counter(tokenizer)
    two = count(format_prompt("Where is Houston?", [], contexts[:2]))
    cfg = GeneratorConfig(max_prompt_tokens=two + 10, max_new_tokens=10)  # budget: exactly two contexts
    result = build_prompt("Where is Houston?", [], contexts, tokenizer, cfg=cfg)
    assert result.used_contexts == (0, 1) and result.dropped_contexts == (2, 3)
    assert result.text == format_prompt("Where is Houston?", [], contexts[:2])
    assert result.prompt_tokens == len(encode_prompt(tokenizer, result.text)) == two
    cfg = GeneratorConfig(max_prompt_tokens=two + 9, max_new_tokens=10)  # one token short of two contexts
    one_short = build_prompt("Where is Houston?", [], contexts, tokenizer, cfg=cfg)
    assert one_short.used_contexts == (0,) and one_short.prompt_tokens <= two - 1
    assert "Where is Houston?\n\nAssistant:" in one_short.text


def test_a_small_low_ranked_context_is_dropped_when_a_higher_one_does_not_fit(tokenizer):
    contexts = [*_contexts(2), {"title": "Tiny", "text": "Yes."}]
    contexts[1]["text"] *= 20  # too big for the budget
    budget = token_counter(tokenizer)(format_prompt("Where is Houston?", [], [contexts[0], contexts[2]]))
    cfg = GeneratorConfig(max_prompt_tokens=budget + 5, max_new_tokens=5)  # contexts 0 and 2 would fit
    result = build_prompt("Where is Houston?", [], contexts, tokenizer, cfg=cfg)
    assert result.used_contexts == (0,) and result.dropped_contexts == (1, 2)


def test_question_that_cannot_fit_raises_prompt_too_long(tokenizer):
    question = "Where is Houston? " * 200
    with pytest.raises(PromptTooLongError, match=r"needs \d+ tokens .* over the budget of 372") as info:
        cfg = GeneratorConfig(max_prompt_tokens=500, max_new_tokens=128)
        build_prompt(question, HISTORY, _contexts(2), tokenizer, cfg=cfg)
    assert isinstance(info.value, SparkragError)


def test_oldest_history_is_dropped_before_failing(tokenizer):
    history = [{"role": "user", "content": "Tell me about Texas. " * 60}, {"role": "assistant", "content": "Texas."}]
    count = token_counter(tokenizer)
    fits = count(format_prompt("Where is Houston?", history[1:], []))
    cfg = GeneratorConfig(max_prompt_tokens=fits + 1, max_new_tokens=1)
    result = build_prompt("Where is Houston?", history, _contexts(1), tokenizer, cfg=cfg)
    assert result.dropped_turns == 1 and result.used_contexts == () and result.dropped_contexts == (0,)
    assert result.text == format_prompt("Where is Houston?", history[1:], [])


def test_count_tokens_callable_replaces_the_tokenizer():
    words = lambda text: len(text.split())  # noqa: E731
    base = words(format_prompt("Where is Houston?", [], []))
    cfg = GeneratorConfig(max_prompt_tokens=base + 8, max_new_tokens=1)  # room for 7 more words
    result = build_prompt("Where is Houston?", [], ["a b c d", "e f g h", "i"], cfg=cfg, count_tokens=words)
    assert result.used_contexts == (0,) and result.dropped_contexts == (1, 2) and result.prompt_tokens == base + 4


def test_budget_and_tokenizer_are_required():
    with pytest.raises(ConfigError, match="max_prompt_tokens"):
        build_prompt("q", [], [], count_tokens=len, cfg=GeneratorConfig(max_prompt_tokens=128, max_new_tokens=128))
    with pytest.raises(ConfigError, match="tokenizer"):
        build_prompt("q", [], [], cfg=GeneratorConfig())


@pytest.mark.parametrize(
    "answer",
    [
        ABSTAIN_TEXT,
        "sorry, i cannot find the answer based on the context",
        "  SORRY! I can't find the answer based on the context.",
        "Sorry I cannot find the answer based on the context. Please ask something else.",
        "Assistant: Sorry. I cannot find the answer based on the context.",
        "I’m sorry, but I couldn’t find the answer in the context.",
        "The answer cannot be found in the context.",
        "Unfortunately, this is not mentioned in the provided context.",
        "",
        "   ",
        None,
        "Sorry.",
    ],
)
def test_abstentions(answer):
    assert is_abstention(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "September 4, 1981",
        "Paris. The context does not mention the year.",
        "It cannot be found in nature; it is made in labs.",
        "Sorry Seems to Be the Hardest Word is a song by Elton John.",
        "Houston, Texas",
    ],
)
def test_answers_are_not_abstentions(answer):
    assert not is_abstention(answer)


def test_prompt_and_generate_modules_import_no_torch():
    code = "import sys, sparkrag.generation.prompt, sparkrag.generation.generate; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
