"""Prompts in a model's own chat template, and the choice between it and the ChatQA format.

``generator.prompt_style``:

- ``chatqa``: ChatQA-1.5's exact format (:mod:`sparkrag.generation.prompt`), BOS + text.
- ``chat_template``: the tokenizer's chat template (``apply_chat_template``) with a system
  message that holds the contexts, tells the model to answer only from them and to say
  :data:`sparkrag.generation.prompt.ABSTAIN_TEXT` when it cannot; history turns are chat messages.
- ``auto``: ``chatqa`` for ChatQA models (the model name contains "chatqa") and for
  tokenizers without a chat template, else ``chat_template``.

A chat-template prompt is tokenised with its special tokens recognised (the template writes
them) and without added ones (the template writes BOS itself when the model wants one), as
``apply_chat_template(tokenize=True)`` does. Special-token strings inside retrieved text or
the question are broken up first, so a document cannot close the system turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Sequence

from sparkrag.errors import ConfigError
from sparkrag.generation.prompt import (
    ABSTAIN_TEXT,
    ContextLike,
    PromptResult,
    PromptTooLongError,
    _turns,
    build_prompt,
    encode_prompt,
    format_context,
)

if TYPE_CHECKING:
    from sparkrag.config import GeneratorConfig

__all__ = ["CHAT_SYSTEM_PROMPT", "resolve_prompt_style", "encode_for_style", "format_chat_prompt",
           "build_chat_prompt", "pack_prompt"]

Style = Literal["chatqa", "chat_template"]

CHAT_SYSTEM_PROMPT = (
    "You are a question answering assistant. Answer the user's question using only the context below. "
    f'If the context does not contain the answer, reply exactly: "{ABSTAIN_TEXT}"'
)
_STYLE_INSTRUCTION = {
    "short": "Answer with a short span of just a few words, taken from the context.",
    "full": "Give a full and complete answer.",
}


def resolve_prompt_style(cfg: "GeneratorConfig", tokenizer: Any) -> Style:
    """The prompt style for this model and tokenizer (see the module docstring).

    Raises:
        ConfigError: ``chat_template`` asked for and the tokenizer has no chat template.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if cfg.prompt_style == "chat_template" and not has_template:
        raise ConfigError(f"generator.prompt_style=chat_template, but the tokenizer of {cfg.model!r} has no "
                          "chat template; use prompt_style chatqa")
    if cfg.prompt_style != "auto":
        return cfg.prompt_style
    if "chatqa" in cfg.model.lower() or not has_template:
        return "chatqa"
    return "chat_template"


def encode_for_style(tokenizer: Any, text: str, style: Style) -> list[int]:
    """Token ids the generator gets for a prompt of ``style``."""
    if style == "chatqa":
        return encode_prompt(tokenizer, text)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _defuse(text: str, specials: Sequence[str]) -> str:
    """Break special-token strings ("<|im_end|>") so the tokenizer reads them as plain text."""
    for token in specials:
        if token in text:
            text = text.replace(token, f"{token[0]} {token[1:]}")
    return text


def _specials(tokenizer: Any) -> list[str]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or []) | {t.content for t in added.values()}
    return sorted((t for t in tokens if len(t) > 1), key=len, reverse=True)


def _messages(blocks: Sequence[str], turns: list[tuple[str, str]], answer_style: str) -> list[dict[str, str]]:
    if answer_style not in _STYLE_INSTRUCTION:
        raise ConfigError(f"answer_style: expected 'short' or 'full', got {answer_style!r}")
    context = "\n\n".join(blocks) if blocks else "(no context was found)"
    system = f"{CHAT_SYSTEM_PROMPT} {_STYLE_INSTRUCTION[answer_style]}\n\nContext:\n{context}"
    return [{"role": "system", "content": system}] + [{"role": r, "content": c} for r, c in turns]


def _render(tokenizer: Any, blocks: Sequence[str], turns: list[tuple[str, str]], answer_style: str) -> str:
    return tokenizer.apply_chat_template(_messages(blocks, turns, answer_style), tokenize=False,
                                         add_generation_prompt=True)


def format_chat_prompt(question: str, history: Sequence[Any] | None, contexts: Sequence[ContextLike],
                       tokenizer: Any, *, answer_style: str = "short", max_history_turns: int = 7) -> str:
    """The chat-template prompt for one question, with no token budget (see :func:`build_chat_prompt`).

    Example:
        >>> format_chat_prompt("Who?", [], ["Ann did."], tokenizer).startswith("<|im_start|>system")  # doctest: +SKIP
        True
    """
    specials = _specials(tokenizer)
    turns = [(r, _defuse(c, specials)) for r, c in _turns(question, history, max_history_turns)]
    blocks = [_defuse(format_context(c, where=f"contexts[{i}]"), specials) for i, c in enumerate(contexts)]
    return _render(tokenizer, blocks, turns, answer_style)


def build_chat_prompt(question: str, history: Sequence[Any] | None, contexts: Sequence[ContextLike],
                      tokenizer: Any, *, cfg: "GeneratorConfig") -> PromptResult:
    """The chat-template prompt with as many contexts as fit in ``max_prompt_tokens - max_new_tokens``.

    The same packing rules as :func:`sparkrag.generation.prompt.build_prompt`: a prefix of the ranking,
    the oldest history messages dropped only when the prompt without contexts does not fit,
    the question never cut; tokens counted exactly on the rendered template.

    Raises:
        PromptTooLongError: the system message and the question alone exceed the budget.
        PromptError: a bad question, history turn or context, named.
    """
    budget = cfg.max_prompt_tokens - cfg.max_new_tokens
    if budget <= 0:
        raise ConfigError(f"max_prompt_tokens ({cfg.max_prompt_tokens}) must exceed max_new_tokens "
                          f"({cfg.max_new_tokens})")
    specials = _specials(tokenizer)
    turns = [(r, _defuse(c, specials)) for r, c in _turns(question, history, cfg.max_history_turns)]
    blocks = [_defuse(format_context(c, where=f"contexts[{i}]"), specials) for i, c in enumerate(contexts)]

    def count(used: Sequence[str], kept: list[tuple[str, str]]) -> tuple[str, int]:
        text = _render(tokenizer, used, kept, cfg.answer_style)
        return text, len(encode_for_style(tokenizer, text, "chat_template"))

    dropped_turns = 0
    text, tokens = count([], turns)
    while tokens > budget:
        if dropped_turns == len(turns) - 1:
            raise PromptTooLongError(f"the chat prompt without contexts or history needs {tokens} tokens, over the "
                                     f"budget of {budget} (max_prompt_tokens - max_new_tokens)")
        dropped_turns += 1
        text, tokens = count([], turns[dropped_turns:])
    kept, used = turns[dropped_turns:], []
    for i in range(len(blocks)):
        candidate, candidate_tokens = count([blocks[k] for k in used] + [blocks[i]], kept)
        if candidate_tokens > budget:
            break  # a prefix of the ranking: nothing lower-ranked is tried
        used.append(i)
        text, tokens = candidate, candidate_tokens
    dropped = tuple(i for i in range(len(blocks)) if i not in used)
    return PromptResult(text, tuple(used), tokens, dropped, dropped_turns)


def pack_prompt(question: str, history: Sequence[Any] | None, contexts: Sequence[ContextLike], tokenizer: Any, *,
                cfg: "GeneratorConfig", style: Style) -> PromptResult:
    """The packed prompt in ``style``: :func:`sparkrag.generation.prompt.build_prompt` or :func:`build_chat_prompt`."""
    if style == "chatqa":
        return build_prompt(question, history, contexts, tokenizer, cfg=cfg)
    return build_chat_prompt(question, history, contexts, tokenizer, cfg=cfg)
