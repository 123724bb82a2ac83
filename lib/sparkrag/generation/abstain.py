"""Abstention: does a generated answer say the context lacks the answer?

ChatQA says its fixed sentence (:data:`sparkrag.generation.prompt.ABSTAIN_TEXT`); other instruct models,
told to say that sentence, often say it in their own words ("The context does not mention
...", "I'm sorry, but I don't have information about ..."). The built-in phrasings cover
both; ``generator.abstain_patterns`` adds regexes, ``generator.abstain_builtin: false``
keeps only those.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Sequence

from sparkrag.errors import ConfigError

if TYPE_CHECKING:
    from sparkrag.config import GeneratorConfig

__all__ = ["BUILTIN_PATTERNS", "is_abstention", "make_abstention_rule", "normalise_answer"]

_APOLOGY = re.compile(r"^(assistant )?((im |i am )?(so )?sorry|unfortunately|apologies|my apologies)\b,? ?"
                      r"(but )?")
_SUBJECT = r"(context|passage|document|text|information|source)s?"
# Matched (``re.search``) on the normalised first sentence after an opening apology.
BUILTIN_PATTERNS: tuple[str, ...] = (
    r"\b(cannot|can not|cant|could not|couldnt|unable to|not able to) (find|locate|determine|identify)\b"
    r".*\b(answer|information|context|passage|document|text)\b",
    r"\b(answer|information) (is not|isnt|cannot be|can not be|could not be|was not) "
    r"(found|available|provided|mentioned|given)\b",
    r"\bnot (mentioned|provided|stated|given|specified|found|available|included|discussed) in the "
    r"(given |provided |above )?" + _SUBJECT + r"\b",
    r"\b" + _SUBJECT + r"( (given|provided|above))? (does not|doesnt|do not|dont|did not|didnt) "
    r"(contain|provide|mention|say|specify|include|"
    r"state|give|offer|have|discuss|tell)\b",
    r"^(i )?(dont|do not) (know|have (any |enough |the )?(information|details|data|answer))\b",
    r"^(i )?(cannot|can not|cant|am unable to|am not able to) (answer|say|tell|provide)\b",
    r"^there (is|are) no (information|mention|answer|details|data)\b",
    r"^no (information|answer|mention)\b",
    r"\b(not enough|insufficient|no relevant) (information|context|details)\b",
    r"\bunanswerable\b",
)
_BUILTIN = [re.compile(p) for p in BUILTIN_PATTERNS]


def normalise_answer(answer: str) -> str:
    """The first sentence after an opening apology, lower case, letters/digits/spaces only."""
    text = answer.lower().replace("\u2019", "'").replace("'", "")
    text = " ".join(re.sub(r"[^a-z0-9.!?,]+", " ", text).split())
    text = _APOLOGY.sub("", text.replace(".", " . ").replace("!", " . ").replace("?", " . "))
    text = " ".join(text.split()).lstrip(". ")
    first = text.split(" . ", 1)[0].strip(" .")
    return " ".join(first.replace(",", " ").split())


def is_abstention(answer: str | None, *, extra: Sequence["re.Pattern[str]"] = (), builtin: bool = True) -> bool:
    """Whether an answer says the context lacks the answer (or is empty).

    Case, punctuation, an "Assistant:" prefix and an opening apology ("Sorry.",
    "Unfortunately,", "I'm sorry, but") are ignored; the first sentence after the apology is
    matched against :data:`BUILTIN_PATTERNS` (unless ``builtin`` is false) and ``extra``.
    Later sentences are not looked at, so "Paris. The context does not mention the year."
    is an answer.

    Example:
        >>> is_abstention("sorry, I can't find the answer based on the context")
        True
        >>> is_abstention("The context does not mention when the bridge opened.")
        True
        >>> is_abstention("Paris")
        False
    """
    if answer is None or not answer.strip():
        return True
    first = normalise_answer(answer)
    if not first:
        return True  # nothing but "Sorry." or punctuation
    patterns = [*(_BUILTIN if builtin else ()), *extra]
    return any(p.search(first) for p in patterns)


def make_abstention_rule(cfg: "GeneratorConfig") -> Callable[[str | None], bool]:
    """``answer -> abstained`` with ``cfg.abstain_patterns`` compiled once (on the driver: a bad
    regex fails before any task).

    Raises:
        ConfigError: naming the pattern that does not compile.

    Example:
        >>> rule = make_abstention_rule(GeneratorConfig(abstain_patterns=(r"^no idea\\b",)))  # doctest: +SKIP
        >>> rule("No idea, sorry.")  # doctest: +SKIP
        True
    """
    extra = []
    for i, pattern in enumerate(cfg.abstain_patterns):
        try:
            extra.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"generator.abstain_patterns[{i}] {pattern!r}: {exc}") from exc
    builtin = cfg.abstain_builtin
    return lambda answer: is_abstention(answer, extra=extra, builtin=builtin)
