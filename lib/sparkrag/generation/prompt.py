"""The ChatQA-1.5 prompt format and context packing within a token budget.

The format follows the model card of nvidia/Llama3-ChatQA-1.5-8B (``get_formatted_input``)
and ChatRAG Bench's ``evaluation/dataset.py`` (``reformat_question`` / ``get_inputs``)::

    System: This is a chat between a user and an artificial intelligence assistant. ...

    title: <title>, source: <chunk 1>

    <chunk 2 without a title>

    User: <first user turn>

    Assistant: <answer>

    User: <instruction> <question>

    Assistant:

i.e. ``system + "\\n\\n" + context + "\\n\\n" + conversation`` where the conversation is
the turns, each ``"User: "``/``"Assistant: "`` + content, joined by ``"\\n\\n"`` and
followed by ``"\\n\\nAssistant:"``. The card's code and ChatRAG Bench put
"Please give a full and complete answer for the question." plus a space before the FIRST
user turn (the long-answer datasets), and "Answer the following question with a short
span. The answer needs to be just in a few words." plus a space before the LAST user turn
(CoQA, short answers). Without contexts the context block is left out entirely, as the
card's "when context is not available" format. Contexts are written as ChatRAG Bench
writes retrieved neighbours, ``"title: " + title + ", source: " + text``, joined by
``"\\n\\n"``; a context without a title is written as its bare text.

The card tokenises ``tokenizer.bos_token + formatted_input``; a Llama-3 tokenizer also
prepends BOS by itself, so prompts are encoded as the BOS id followed by the text with
``add_special_tokens=False`` (:func:`encode_prompt`): exactly one BOS either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence, Union

from sparkrag.errors import ConfigError, SparkragError

if TYPE_CHECKING:
    from sparkrag.config import GeneratorConfig

__all__ = [
    "SYSTEM_PROMPT",
    "FULL_INSTRUCTION",
    "SHORT_INSTRUCTION",
    "ABSTAIN_TEXT",
    "ContextLike",
    "PromptResult",
    "PromptError",
    "PromptTooLongError",
    "format_context",
    "format_prompt",
    "encode_prompt",
    "token_counter",
    "build_prompt",
    "is_abstention",
]

SYSTEM_PROMPT = (
    "System: This is a chat between a user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions based on the context. The assistant "
    "should also indicate when the answer cannot be found in the context."
)
FULL_INSTRUCTION = "Please give a full and complete answer for the question."
SHORT_INSTRUCTION = "Answer the following question with a short span. The answer needs to be just in a few words."
# What ChatQA answers when the context lacks the answer (ChatRAG Bench's unanswerable target).
ABSTAIN_TEXT = "Sorry. I cannot find the answer based on the context."

# A context: its text, or a mapping / Spark Row / object with ``text`` and optional ``title``.
ContextLike = Union[str, Mapping[str, Any], Any]
TokenCounter = Callable[[str], int]


class PromptError(SparkragError, ValueError):
    """A question, history turn or context is missing or of the wrong type; the message names it."""


class PromptTooLongError(PromptError):
    """The system text, instruction and question alone exceed the prompt token budget."""


@dataclass(frozen=True)
class PromptResult:
    """A formatted prompt and how the contexts were packed into it.

    Attributes:
        text: the prompt, without BOS (see :func:`encode_prompt`).
        used_contexts: indices into the given contexts, in prompt order (most relevant first).
        prompt_tokens: tokens the generator sees for ``text``, BOS included.
        dropped_contexts: indices of the lowest-ranked contexts that did not fit.
        dropped_turns: history messages dropped (oldest first) so the conversation fits.
    """

    text: str
    used_contexts: tuple[int, ...]
    prompt_tokens: int
    dropped_contexts: tuple[int, ...]
    dropped_turns: int = 0


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    if hasattr(obj, "asDict"):  # a Spark Row: `name in row` tests values, not fields
        return obj.asDict().get(name)
    return getattr(obj, name, None)


def format_context(ctx: ContextLike, *, where: str = "context") -> str:
    """One context as ChatRAG Bench writes a retrieved neighbour.

    Args:
        ctx: a string, or a mapping / Spark Row / object with a ``text`` string and an
            optional ``title``.
        where: names the context in error messages, e.g. ``contexts[3]``.

    Returns:
        ``"title: <title>, source: <text>"`` when the title is non-empty, else the text.

    Raises:
        PromptError: when the text is missing or not a string.

    Example:
        >>> format_context({"title": "Paris", "text": "Paris is the capital of France."})
        'title: Paris, source: Paris is the capital of France.'
    """
    if isinstance(ctx, str):
        return ctx.strip()
    text, title = _field(ctx, "text"), _field(ctx, "title")
    if not isinstance(text, str):
        raise PromptError(f"{where}: expected a string or a record with a 'text' string, got {ctx!r:.200}")
    if title is not None and not isinstance(title, str):
        raise PromptError(f"{where}: expected 'title' to be a string or null, got {type(title).__name__}")
    title = (title or "").strip()
    return f"title: {title}, source: {text.strip()}" if title else text.strip()


def _turns(question: str, history: Sequence[Any] | None, max_history_turns: int) -> list[tuple[str, str]]:
    """History plus the question, the last ``max_history_turns`` messages (ChatRAG Bench's [-7:])."""
    if not isinstance(question, str) or not question.strip():
        raise PromptError(f"question: expected a non-empty string, got {question!r:.200}")
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(history or []):
        role, content = _field(turn, "role"), _field(turn, "content")
        if role not in ("user", "assistant"):
            raise PromptError(f"history[{i}].role: expected 'user' or 'assistant', got {role!r}")
        if not isinstance(content, str):
            raise PromptError(f"history[{i}].content: expected a string, got {type(content).__name__}")
        turns.append((role, content.strip()))
    keep = max(max_history_turns - 1, 0)
    return (turns[-keep:] if keep else []) + [("user", question.strip())]


def _conversation(turns: list[tuple[str, str]], answer_style: str) -> str:
    contents = [content for _, content in turns]
    users = [i for i, (role, _) in enumerate(turns) if role == "user"]
    if answer_style == "full":
        contents[users[0]] = f"{FULL_INSTRUCTION} {contents[users[0]]}"
    elif answer_style == "short":
        contents[users[-1]] = f"{SHORT_INSTRUCTION} {contents[users[-1]]}"
    else:
        raise ConfigError(f"answer_style: expected 'short' or 'full', got {answer_style!r}")
    lines = [("User: " if role == "user" else "Assistant: ") + c for (role, _), c in zip(turns, contents)]
    return "\n\n".join(lines) + "\n\nAssistant:"


def format_prompt(
    question: str,
    history: Sequence[Any] | None = None,
    contexts: Sequence[ContextLike] = (),
    *,
    answer_style: Literal["short", "full"] = "short",
    max_history_turns: int = 7,
) -> str:
    """The ChatQA-1.5 prompt for one question, with no token budget (see :func:`build_prompt`).

    Args:
        question: the current user question.
        history: earlier turns, oldest first, each ``{"role": "user"|"assistant", "content": str}``.
        contexts: most relevant first; see :func:`format_context`.
        answer_style: ``short`` adds the short-span instruction to the last user turn,
            ``full`` the full-answer instruction to the first user turn kept.
        max_history_turns: messages kept, the question included (ChatRAG Bench keeps 7).

    Returns:
        The prompt text ending with ``"Assistant:"``, without BOS.

    Raises:
        PromptError: naming the bad question, history turn or context.

    Example:
        >>> format_prompt("Who?", [], ["Ann did."]).endswith("User: Answer the following question with "
        ...     "a short span. The answer needs to be just in a few words. Who?\\n\\nAssistant:")
        True
    """
    turns = _turns(question, history, max_history_turns)
    blocks = [format_context(c, where=f"contexts[{i}]") for i, c in enumerate(contexts)]
    return _join(blocks, _conversation(turns, answer_style))


def _join(context_blocks: Sequence[str], conversation: str) -> str:
    if context_blocks:
        return SYSTEM_PROMPT + "\n\n" + "\n\n".join(context_blocks) + "\n\n" + conversation
    return SYSTEM_PROMPT + "\n\n" + conversation


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids the generator gets for ``text``: the BOS id, then ``text`` without special tokens.

    The same ids as the card's ``tokenizer(tokenizer.bos_token + text)`` minus the second
    BOS a Llama-3 tokenizer's post-processor adds: exactly one BOS (none for tokenizers
    without one). Special-token strings inside the text ("<|eot_id|>" in a retrieved
    document) are tokenised as plain text, so retrieved text cannot end a turn.

    Example:
        >>> ids = encode_prompt(tokenizer, "System: ...")  # doctest: +SKIP
    """
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id if tokenizer.bos_token is not None else None
    return ([bos] if bos is not None else []) + list(ids)


def token_counter(tokenizer: Any) -> TokenCounter:
    """A ``count_tokens(text)`` for :func:`build_prompt` that counts as :func:`encode_prompt` encodes."""
    return lambda text: len(encode_prompt(tokenizer, text))


def build_prompt(
    question: str,
    history: Sequence[Any] | None,
    contexts: Sequence[ContextLike],
    tokenizer: Any = None,
    *,
    cfg: "GeneratorConfig",
    count_tokens: TokenCounter | None = None,
) -> PromptResult:
    """The ChatQA prompt with as many contexts as fit in ``max_prompt_tokens - max_new_tokens``.

    The conversation (question, instruction, the last ``cfg.max_history_turns`` messages)
    comes first; contexts then fill the remaining budget most-relevant-first (list order),
    and the first context that does not fit is dropped together with every lower-ranked one,
    so the prompt always holds a prefix of the ranking. Only when the prompt without any
    context exceeds the budget are the oldest history messages dropped; the system text,
    instruction and question are never cut. Tokens are counted in the generator's own
    tokenizer, BOS included; the final count is of the exact prompt text.

    Args:
        question: the current user question.
        history: earlier turns, oldest first (``role``/``content`` records), or None.
        contexts: retrieved contexts, most relevant first (see :func:`format_context`).
        tokenizer: the generator's tokenizer; or pass ``count_tokens`` instead.
        cfg: uses ``max_prompt_tokens``, ``max_new_tokens``, ``answer_style``, ``max_history_turns``.
        count_tokens: ``text -> tokens the generator sees`` (e.g. another model's tokenizer
            for the extractive answerer); overrides ``tokenizer``.

    Returns:
        A :class:`PromptResult`.

    Raises:
        PromptTooLongError: the system text, instruction and question alone exceed the budget.
        PromptError: a bad question, history turn or context, named.
        ConfigError: the budget is not positive, or no tokenizer nor counter was given.

    Example:
        >>> result = build_prompt("Who founded X?", [], contexts, tokenizer, cfg=GeneratorConfig())  # doctest: +SKIP
        >>> result.used_contexts, result.prompt_tokens  # doctest: +SKIP
        ((0, 1, 2), 812)
    """
    count = count_tokens or (token_counter(tokenizer) if tokenizer is not None else None)
    if count is None:
        raise ConfigError("build_prompt: pass the generator's tokenizer or a count_tokens callable")
    budget = cfg.max_prompt_tokens - cfg.max_new_tokens
    if budget <= 0:
        raise ConfigError(
            f"max_prompt_tokens ({cfg.max_prompt_tokens}) must exceed max_new_tokens ({cfg.max_new_tokens})"
        )
    turns = _turns(question, history, cfg.max_history_turns)
    blocks = [format_context(c, where=f"contexts[{i}]") for i, c in enumerate(contexts)]
    conversation, dropped_turns = _fit_conversation(turns, cfg.answer_style, budget, count)
    base = count(_join([], conversation))
    overhead = count("")  # the BOS every count includes once
    used: list[int] = []
    total = base
    for i, block in enumerate(blocks):
        # "\n\n" + block is what adding a context adds to the text; BPE merges across the
        # boundary are rare, and the exact recount below corrects for them.
        cost = count("\n\n" + block) - overhead
        if total + cost > budget:
            break
        used.append(i)
        total += cost
    text = _join([blocks[i] for i in used], conversation)
    exact = count(text)
    while exact > budget and used:
        used.pop()
        text = _join([blocks[i] for i in used], conversation)
        exact = count(text)
    dropped = tuple(i for i in range(len(blocks)) if i not in used)
    return PromptResult(text, tuple(used), exact, dropped, dropped_turns)


def _fit_conversation(
    turns: list[tuple[str, str]], answer_style: str, budget: int, count: TokenCounter
) -> tuple[str, int]:
    """The conversation, dropping the oldest history messages only if it cannot fit otherwise."""
    for dropped in range(len(turns)):
        conversation = _conversation(turns[dropped:], answer_style)
        tokens = count(_join([], conversation))
        if tokens <= budget:
            return conversation, dropped
    system_tokens = count(SYSTEM_PROMPT)
    raise PromptTooLongError(
        f"the prompt without contexts or history needs {tokens} tokens (system text {system_tokens}, "
        f"instruction and question {tokens - system_tokens}), over the budget of {budget} "
        f"(max_prompt_tokens - max_new_tokens)"
    )


# The abstention rule lives with the generators' other output checks; re-exported for callers.
from sparkrag.generation.abstain import is_abstention  # noqa: E402
