"""The extractive answerer: the retrieved sentence(s) most similar to the question; no LLM.

A zero-argument factory for executors (:func:`make_extractive_fn`) that loads its encoder
once per Python worker and answers ``(question, [context texts])`` rows with one
:class:`sparkrag.generation.generate.Generation` each, in input order; a failing row gets its ``error``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sparkrag.errors import ModelContractError
from sparkrag.generation.generate import Generation
from sparkrag.models import resolve_model_path, worker_cached
from sparkrag.generation.prompt import ABSTAIN_TEXT

if TYPE_CHECKING:
    from sparkrag.config import EncoderConfig, GeneratorConfig

__all__ = ["ExtractiveAnswerer", "make_extractive_fn", "split_sentences"]


# A sentence ends at . ! or ? (plus closing quotes/brackets) followed by space and an
# upper-case letter, digit or opening quote; or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\s*\n+\s*")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "inc",
                  "ltd", "co", "u.s", "u.k", "fig", "approx", "gen", "col", "lt", "sgt", "mt", "ft"}


def split_sentences(text: str) -> list[str]:
    """Split text into sentences, not after common abbreviations or initials ("Dr.", "J.").

    Example:
        >>> split_sentences("Dr. Smith came. He left at 5 p.m. on Friday! Why?")
        ['Dr. Smith came.', 'He left at 5 p.m. on Friday!', 'Why?']
    """
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.start()].rstrip()
        last_word = piece.rsplit(None, 1)[-1].rstrip(".").lower() if piece else ""
        if piece.endswith(".") and "\n" not in match.group() and (
            last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha())
        ):
            continue  # "Dr. Smith", "J. Smith": not a sentence end
        sentence = text[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


class ExtractiveAnswerer:
    """Answers with the retrieved sentence(s) most similar to the question; no LLM.

    Call it with ``(question, [context texts])`` rows. Every context is split into
    sentences (:func:`split_sentences`; a sentence longer than the encoder takes is cut
    into windows of ``max_tokens``); the question is embedded in the query role and the
    sentences in the passage role; the ``cfg.extractive_sentences`` best sentences by cosine
    similarity are joined in context order. When the best scores below
    ``cfg.extractive_threshold`` (or there is no sentence) the answer is
    :data:`sparkrag.generation.prompt.ABSTAIN_TEXT`. Sentences shared by rows are embedded once.
    """

    def __init__(
        self, encode_query: Callable, encode_passage: Callable, tokenizer: Any, cfg: "GeneratorConfig", *,
        max_tokens: int,
    ) -> None:
        self.encode_query = encode_query
        self.encode_passage = encode_passage
        self.tokenizer = tokenizer
        self.max_tokens = max(int(max_tokens), 1)
        self.threshold = float(cfg.extractive_threshold)
        self.top_n = max(int(cfg.extractive_sentences), 1)

    def __call__(self, rows: Sequence[tuple[str, Sequence[str]]]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(rows)
        prepared: list[tuple[int, str, list[str]]] = []
        lengths: dict[str, int] = {}  # encoder tokens of each question and sentence
        for i, row in enumerate(rows):
            try:
                prepared.append((i, *self._prepare(row, lengths)))
            except Exception as exc:  # one bad row must not fail the others
                results[i] = Generation(None, error=f"{type(exc).__name__}: {exc}")
        if not prepared:
            return results  # type: ignore[return-value]
        sentences = list(dict.fromkeys(s for _, _, row_sentences in prepared for s in row_sentences))
        position = {s: k for k, s in enumerate(sentences)}
        q_vecs = self._unit(self.encode_query([q for _, q, _ in prepared]), len(prepared), "query")
        s_vecs = self._unit(self.encode_passage(sentences), len(sentences), "passage") if sentences else None
        for (i, question, row_sentences), q_vec in zip(prepared, q_vecs):
            scores = s_vecs[[position[s] for s in row_sentences]] @ q_vec if row_sentences else []
            results[i] = self._answer(question, row_sentences, scores, lengths)
        return results  # type: ignore[return-value]

    def _prepare(self, row: tuple[str, Sequence[str]], lengths: dict[str, int]) -> tuple[str, list[str]]:
        question, contexts = row
        if not isinstance(question, str) or not question.strip():
            raise TypeError(f"expected a non-empty question string, got {question!r:.100}")
        question = question.strip()
        lengths[question] = len(self.tokenizer(question, add_special_tokens=False, verbose=False)["input_ids"])
        sentences: list[str] = []
        for k, ctx in enumerate(contexts or []):
            if not isinstance(ctx, str):
                raise TypeError(f"contexts[{k}]: expected a string, got {type(ctx).__name__}")
            for sentence in split_sentences(ctx):
                sentences.extend(self._windows(sentence, lengths))
        return question, list(dict.fromkeys(sentences))  # overlapping chunks repeat sentences

    def _windows(self, sentence: str, lengths: dict[str, int]) -> list[str]:
        """The sentence, or windows of it that the encoder takes whole (it refuses longer passages)."""
        if sentence in lengths:
            return [sentence]
        encoded = self.tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = encoded["offset_mapping"]
        if len(offsets) <= self.max_tokens:
            lengths[sentence] = len(offsets)
            return [sentence]
        windows = []
        for start in range(0, len(offsets), self.max_tokens):
            end = min(start + self.max_tokens, len(offsets)) - 1
            window = sentence[offsets[start][0] : offsets[end][1]].strip()
            lengths[window] = end - start + 1
            windows.append(window)
        return windows

    @staticmethod
    def _unit(vectors: Any, expected_rows: int, role: str) -> Any:
        import numpy as np

        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != expected_rows:
            raise ModelContractError(f"encode ({role}): expected {expected_rows} vectors, got shape {array.shape}")
        # Cosine whatever encoder.normalize says: the threshold is a cosine similarity.
        return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)

    def _answer(self, question: str, sentences: list[str], scores: Any, lengths: dict[str, int]) -> Generation:
        considered = lengths[question] + sum(lengths[s] for s in sentences)
        best = sorted(range(len(sentences)), key=lambda k: -scores[k])[: self.top_n]
        chosen = sorted(k for k in best if scores[k] >= self.threshold)  # back in context order
        if not chosen:
            return Generation(ABSTAIN_TEXT, prompt_tokens=considered, completion_tokens=0)
        answer = " ".join(sentences[k] for k in chosen)
        completion = len(self.tokenizer(answer, add_special_tokens=False, verbose=False)["input_ids"])
        return Generation(answer, prompt_tokens=considered, completion_tokens=completion)


def make_extractive_fn(encoder: "EncoderConfig", cfg: "GeneratorConfig") -> Callable[[], ExtractiveAnswerer]:
    """A zero-argument factory of an :class:`ExtractiveAnswerer`, loaded once per worker.

    Uses ``sparkrag.embed.make_encode_fn(encoder, role=...)`` for the question (query role)
    and the sentences (passage role), and the encoder's tokenizer to count tokens and to cut
    sentences longer than ``encoder.max_length`` (less special tokens and passage prefix).

    Args:
        encoder: the retrieval encoder (the same model that embedded the chunks).
        cfg: uses ``extractive_threshold`` and ``extractive_sentences``.

    Returns:
        ``load()``; ``load()(rows)`` takes ``(question, [context texts])`` rows and returns one
        :class:`Generation` per row, in order.

    Example:
        >>> answer = make_extractive_fn(EncoderConfig(), GeneratorConfig())()  # doctest: +SKIP
        >>> answer([("When was X born?", ["X was born in 1901. X died in 1990."])])[0].text  # doctest: +SKIP
        'X was born in 1901.'
    """

    def build() -> ExtractiveAnswerer:
        from transformers.utils import logging as hf_logging

        from sparkrag.models import encoder_max_length, load_tokenizer
        from sparkrag.embed import make_encode_fn

        hf_logging.disable_progress_bar()  # no progress bars in executor logs

        path = resolve_model_path(encoder.model)
        tokenizer = load_tokenizer(path)
        prefix = tokenizer(encoder.passage_prefix, add_special_tokens=False)["input_ids"]
        overhead = len(tokenizer("")["input_ids"]) + len(prefix)  # special tokens and the passage prefix
        # 2 tokens of slack: a window cut at token boundaries may re-tokenise a little longer.
        max_tokens = encoder_max_length(path, encoder.max_length) - overhead - 2
        encode_query = make_encode_fn(encoder, role="query")()
        encode_passage = make_encode_fn(encoder, role="passage")()
        return ExtractiveAnswerer(encode_query, encode_passage, tokenizer, cfg, max_tokens=max_tokens)

    return lambda: worker_cached(("sparkrag.generation.generate.extractive", encoder, cfg), build)
