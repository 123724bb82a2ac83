"""Abstention from generated text: ChatQA's sentence, other models' own words, and the configurable rule.

The "own words" lines are the phrasings instruct models use instead of the fixed sentence
(written for this test; the last one is SmolLM2's, recorded from `make demo`); the end-to-end run in test_smollm2.py checks the rule on SmolLM2's live output.
"""

from __future__ import annotations

import pytest

from sparkrag.generation.abstain import is_abstention, make_abstention_rule
from sparkrag.config import GeneratorConfig, RagConfig, load_config
from sparkrag.errors import ConfigError
from sparkrag.generation.prompt import ABSTAIN_TEXT

CHATQA_ABSTAINS = [
    ABSTAIN_TEXT,
    "Sorry. I cannot find the answer based on the context.",
    "sorry, i can't find the answer based on the context",
    "Assistant: Sorry. I cannot find the answer based on the context.",
    "I'm sorry, but the answer is not provided in the context.",
    "The answer cannot be found in the given context.",
]
OWN_WORDS_ABSTAINS = [  # instruct models paraphrasing the fixed sentence
    "The context does not mention the torque for bicycle pedal threads.",
    "The context doesn't provide information about pedal threads.",
    "I'm sorry, but I don't have information about bicycle pedals.",
    "I don't know.",
    "There is no information about the torque in the context.",
    "Unfortunately, the text does not specify when the bridge opened.",
    "I cannot answer this question based on the context provided.",
    "The information is not available in the provided context.",
    "This question is unanswerable from the context.",
    "No information is given about that.",
    # SmolLM2 in `make demo` (2026-12-03), asked the sample's unanswerable nationality question
    "The context provided does not specify the nationality of Frédéric Chopin.",
]
ANSWERS = [  # real answers, some of them mentioning what the context lacks after the answer
    "in the late 1990s",
    "Houston, Texas",
    "Paris. The context does not mention the year.",
    "Beyoncé's father, Mathew Knowles.",
    "No, she did not.",
    "There are 25 paragraphs.",
    "She won five Grammy Awards.",
    "Dangerously in Love (2003)",
    "Information theory",
]


@pytest.mark.parametrize("text", CHATQA_ABSTAINS + OWN_WORDS_ABSTAINS)
def test_cannot_answer_replies_abstain(text):
    assert is_abstention(text)


@pytest.mark.parametrize("text", ANSWERS)
def test_answers_do_not_abstain(text):
    assert not is_abstention(text)


@pytest.mark.parametrize("text", ["", "   ", None, "Sorry.", "..."])
def test_empty_replies_abstain(text):
    assert is_abstention(text)


def test_the_rule_is_configurable():
    cfg = load_config(RagConfig, None, ['generator.abstain_patterns=["^no idea\\\\b", "^pass$"]']).generator
    rule = make_abstention_rule(cfg)
    assert rule("No idea, sorry.") and rule("Pass.") and rule(ABSTAIN_TEXT)
    assert not rule("Paris") and not rule("No, she did not.")
    only_mine = make_abstention_rule(GeneratorConfig(abstain_patterns=(r"^no idea\b",), abstain_builtin=False))
    assert only_mine("No idea.") and not only_mine(ABSTAIN_TEXT) and only_mine("")
    with pytest.raises(ConfigError, match=r"generator\.abstain_patterns\[1\]"):
        make_abstention_rule(GeneratorConfig(abstain_patterns=("ok", "(unclosed")))
