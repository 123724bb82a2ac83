"""Answer generation: a batched causal LM (ChatQA or any) and an extractive fallback.

Both are zero-argument factories for executors (:func:`make_generate_fn`,
:func:`make_extractive_fn`): the returned callable loads its models once per Python worker
(:func:`sparkrag.models.worker_cached`) and answers a list of rows, returning one
:class:`Generation` per row in input order. A row that fails (a prompt that cannot be
tokenised or is too long for the model) gets its ``error`` set; the other rows still run.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sparkrag.errors import ModelContractError
from sparkrag.hf_compat import accelerate_available, pretrained_kwargs
from sparkrag.models import resolve_device, resolve_model_path, worker_cached
from sparkrag.prompt import ABSTAIN_TEXT, encode_prompt

if TYPE_CHECKING:
    from sparkrag.config import EncoderConfig, GeneratorConfig

__all__ = ["Generation", "CausalLMGenerator", "ExtractiveAnswerer", "make_generate_fn", "make_tokenizer_fn",
           "make_extractive_fn", "split_sentences"]

log = logging.getLogger(__name__)

EOT_TOKEN = "<|eot_id|>"  # Llama-3's end of turn; ChatQA's card stops on it and on eos


@dataclass(frozen=True)
class Generation:
    """One answer.

    Attributes:
        text: the answer, stripped; None when the row failed.
        prompt_tokens: tokens the model read (BOS included); for the extractive answerer,
            encoder tokens of the question and of every sentence considered.
        completion_tokens: tokens generated, the stop token included when one was produced;
            for the extractive answerer, encoder tokens of the answer (0 when it abstains).
        error: why this row failed (``TypeName: message``), else None.
    """

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    """The model's own eos ids, the tokenizer's eos and Llama-3's ``<|eot_id|>`` when present."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.extend(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.append(tokenizer.eos_token_id)
    if EOT_TOKEN in tokenizer.get_vocab():
        ids.append(tokenizer.convert_tokens_to_ids(EOT_TOKEN))
    return list(dict.fromkeys(i for i in ids if i is not None))


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model), padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # Llama-3 has no pad token
    return tokenizer


def _load_model(model_name: str, dtype_name: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no progress bars in executor logs
    started = time.perf_counter()
    tokenizer = _load_tokenizer(model_name)
    dtype = _torch_dtype(dtype_name, device)
    # With accelerate installed, device_map puts the weights straight onto the GPU (no 16 GB
    # detour through host RAM); without it transformers refuses device_map, so move after.
    direct = device != "cpu" and accelerate_available()
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(model_name), **pretrained_kwargs(dtype), **({"device_map": device} if direct else {})
    )
    model = (model if direct else model.to(device)).eval()
    log.info("loaded %s (%s) on %s in %.1f s", model_name, dtype, device, time.perf_counter() - started)
    return tokenizer, model


class CausalLMGenerator:
    """Greedy batched generation with one causal LM; call it with formatted prompts.

    Prompts are encoded with :func:`sparkrag.prompt.encode_prompt` (one BOS), sorted
    longest first (an out-of-memory batch shows up at once), left-padded in batches of
    ``cfg.batch_size``, generated under ``torch.inference_mode()`` and returned in input
    order. A batch that raises is retried prompt by prompt, so only the bad row fails.
    """

    def __init__(self, tokenizer: Any, model: Any, cfg: "GeneratorConfig") -> None:
        from transformers import GenerationConfig

        self.tokenizer = tokenizer
        self.model = model
        self.batch_size = max(int(cfg.batch_size), 1)
        self.eos_token_ids = _eos_ids(tokenizer, model)
        # One object holds every setting; it also replaces the model's own generation config,
        # whose sampling defaults (temperature, top_p) would otherwise be merged in and warn.
        self.generation_config = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos_token_ids,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        model.generation_config = self.generation_config
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    def __call__(self, prompts: Sequence[str]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(prompts)
        encoded: list[tuple[int, list[int]]] = []
        for i, prompt in enumerate(prompts):
            try:
                encoded.append((i, self._encode(prompt)))
            except Exception as exc:  # one bad prompt must not fail its batch
                results[i] = Generation(None, error=f"{type(exc).__name__}: {exc}")
        encoded.sort(key=lambda item: -len(item[1]))
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            for (i, _), generation in zip(batch, self._generate_safely(batch)):
                results[i] = generation
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise ModelContractError(f"generate: expected {len(prompts)} answers, got {len(prompts) - len(missing)}")
        return results  # type: ignore[return-value]

    def _encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise TypeError(f"expected a non-empty prompt string, got {prompt!r:.100}")
        ids = encode_prompt(self.tokenizer, prompt)
        needed = len(ids) + self.generation_config.max_new_tokens
        if self.max_positions is not None and needed > self.max_positions:
            raise ValueError(
                f"prompt has {len(ids)} tokens; with max_new_tokens {self.generation_config.max_new_tokens} "
                f"that exceeds the model's max_position_embeddings {self.max_positions}"
            )
        return ids

    def _generate_safely(self, batch: list[tuple[int, list[int]]]) -> list[Generation]:
        try:
            return self._generate_batch([ids for _, ids in batch])
        except Exception as exc:
            if len(batch) == 1:
                return [Generation(None, prompt_tokens=len(batch[0][1]), error=f"{type(exc).__name__}: {exc}")]
            log.warning("a batch of %d prompts failed (%s); retrying one by one", len(batch), exc)
            self._free_cuda_cache()
            return [self._generate_safely([item])[0] for item in batch]

    def _generate_batch(self, batch: list[list[int]]) -> list[Generation]:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding: every prompt ends at the last column
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        device = self.model.device
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=self.generation_config,
            )
        new_tokens = output[:, width:].cpu().tolist()  # off the GPU once per batch
        if len(new_tokens) != len(batch):
            raise ModelContractError(f"generate: expected {len(batch)} sequences, got {len(new_tokens)}")
        return [self._decode(ids, tokens) for ids, tokens in zip(batch, new_tokens)]

    def _decode(self, prompt_ids: list[int], tokens: list[int]) -> Generation:
        stops = [pos for pos, token in enumerate(tokens) if token in self.eos_token_ids]
        # After the stop token generate() pads with pad_token_id (often eos itself).
        completion = stops[0] + 1 if stops else len(tokens)
        text = self.tokenizer.decode(tokens[: stops[0]] if stops else tokens, skip_special_tokens=True)
        return Generation(text.strip(), prompt_tokens=len(prompt_ids), completion_tokens=completion)

    def _free_cuda_cache(self) -> None:
        import torch

        # After a failure only (e.g. out of memory): emptying the cache every batch would make
        # the allocator re-reserve the KV cache each time.
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()


def make_generate_fn(cfg: "GeneratorConfig") -> Callable[[], CausalLMGenerator]:
    """A zero-argument factory of a :class:`CausalLMGenerator`, loaded once per worker.

    The tokenizer and ``AutoModelForCausalLM`` come from ``resolve_model_path(cfg.model)``
    with ``dtype`` bf16 on CUDA and fp32 on CPU (unless ``cfg.dtype``), on
    ``resolve_device(cfg.device)``, in eval mode, left padding, pad token = eos when missing.
    Generation is greedy with ``cfg.max_new_tokens``, stopping at the model's eos ids, the
    tokenizer's eos and ``<|eot_id|>``.

    Args:
        cfg: the generator config; ``kind`` is not looked at.

    Returns:
        ``load()``; ``load()(prompts)`` returns one :class:`Generation` per prompt, in order.
        ``load().tokenizer`` is the tokenizer to count prompt tokens with.

    Raises:
        ModelContractError: (from the generator) when the model returns the wrong number of rows.

    Example:
        >>> generate = make_generate_fn(GeneratorConfig(kind="chatqa"))()  # doctest: +SKIP
        >>> generate(["System: ...\\n\\nUser: Hi\\n\\nAssistant:"])[0].text  # doctest: +SKIP
    """

    def load() -> CausalLMGenerator:
        device = resolve_device(cfg.device)
        tokenizer, model = worker_cached(
            ("sparkrag.generate.model", cfg.model, cfg.dtype, device),
            lambda: _load_model(cfg.model, cfg.dtype, device),
        )
        return worker_cached(
            ("sparkrag.generate.generator", cfg, device), lambda: CausalLMGenerator(tokenizer, model, cfg)
        )

    return load


def make_tokenizer_fn(cfg: "GeneratorConfig") -> Callable[[], Any]:
    """A zero-argument factory of the generator's tokenizer alone (left padding, pad = eos).

    For counting prompt tokens where the model itself is not needed, e.g. building prompts
    in one stage and generating in another. Cached per worker.

    Example:
        >>> tokenizer = make_tokenizer_fn(GeneratorConfig(kind="chatqa"))()  # doctest: +SKIP
    """
    return lambda: worker_cached(("sparkrag.generate.tokenizer", cfg.model), lambda: _load_tokenizer(cfg.model))


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
    :data:`sparkrag.prompt.ABSTAIN_TEXT`. Sentences shared by rows are embedded once.
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

        from sparkrag.chunk import encoder_max_length, load_tokenizer
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

    return lambda: worker_cached(("sparkrag.generate.extractive", encoder, cfg), build)
