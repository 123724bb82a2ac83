"""Answer generation: a batched causal LM (ChatQA or any) and an extractive fallback.

Both are zero-argument factories for executors (:func:`make_generate_fn`,
:func:`make_extractive_fn`): the returned callable loads its models once per Python worker
(:func:`sparkrag.models.worker_cached`) and answers a list of rows, returning one
:class:`Generation` per row in input order. A row that fails (a prompt that cannot be
tokenised or is too long for the model) gets its ``error`` set; the other rows still run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sparkrag.errors import ModelContractError
from sparkrag.models import resolve_device, worker_cached

if TYPE_CHECKING:
    from sparkrag.config import GeneratorConfig

__all__ = ["Generation", "CausalLMGenerator", "make_generate_fn", "make_tokenizer_fn", "plan_batches"]

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


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    """The model's own eos ids, the tokenizer's eos and Llama-3's ``<|eot_id|>`` when present."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.extend(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.append(tokenizer.eos_token_id)
    if EOT_TOKEN in tokenizer.get_vocab():
        ids.append(tokenizer.convert_tokens_to_ids(EOT_TOKEN))
    return list(dict.fromkeys(i for i in ids if i is not None))


def plan_batches(lengths: Sequence[int], *, max_new_tokens: int, max_batch_tokens: int,
                 max_rows: int) -> list[list[int]]:
    """Group prompts into ``generate()`` batches by a token budget, longest first.

    Prompts are sorted by length (longest first: an out-of-memory batch shows up at once,
    and neighbours pad little); a batch grows while its padded size, rows x (longest prompt
    + ``max_new_tokens``), stays within ``max_batch_tokens`` and it has at most ``max_rows``
    rows. A prompt too long for the budget on its own forms a batch alone.

    Returns:
        Lists of indices into ``lengths``, every index exactly once.

    Example:
        >>> plan_batches([10, 50, 20, 40], max_new_tokens=10, max_batch_tokens=120, max_rows=8)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            width = lengths[batch[0]] + max_new_tokens  # the longest prompt comes first
            if len(batch) < max_rows and (len(batch) + 1) * width <= max_batch_tokens:
                batch.append(i)
                continue
        batches.append([i])
    return batches


class CausalLMGenerator:
    """Greedy batched generation with one causal LM; call it with formatted prompts.

    Prompts are encoded for the model's prompt style (:func:`sparkrag.generation.chat_prompt.encode_for_style`:
    ChatQA's BOS + text, or the chat template's own special tokens), grouped by
    :func:`plan_batches` (sorted by length, a token budget per batch), left-padded, generated
    under ``torch.inference_mode()`` and returned in input order. A batch that raises is
    retried prompt by prompt, so only the bad row fails.
    """

    def __init__(self, tokenizer: Any, model: Any, cfg: "GeneratorConfig", *, model_id: str | None = None) -> None:
        from transformers import GenerationConfig

        from sparkrag.generation.chat_prompt import resolve_prompt_style

        self.tokenizer = tokenizer
        self.model = model
        self.model_id = model_id or cfg.model
        self.style = resolve_prompt_style(cfg, tokenizer)
        self.batch_size = max(int(cfg.batch_size), 1)
        self.max_batch_tokens = int(cfg.max_batch_tokens)
        self.batches_run = 0  # generate() calls made, for logs and tests
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
        plan = plan_batches([len(ids) for _, ids in encoded], max_new_tokens=self.generation_config.max_new_tokens,
                            max_batch_tokens=self.max_batch_tokens, max_rows=self.batch_size)
        for members in plan:
            batch = [encoded[k] for k in members]
            for (i, _), generation in zip(batch, self._generate_safely(batch)):
                results[i] = generation
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise ModelContractError(f"generate: expected {len(prompts)} answers, got {len(prompts) - len(missing)}")
        return results  # type: ignore[return-value]

    def _encode(self, prompt: str) -> list[int]:
        from sparkrag.generation.chat_prompt import encode_for_style

        if not isinstance(prompt, str) or not prompt:
            raise TypeError(f"expected a non-empty prompt string, got {prompt!r:.100}")
        ids = encode_for_style(self.tokenizer, prompt, self.style)
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
        self.batches_run += 1
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
    """A zero-argument factory of a :class:`CausalLMGenerator`, loaded once per worker and GPU.

    ``cfg.model`` is resolved by :func:`sparkrag.generation.llm.resolve_llm_source` (a hub id, a folder,
    a ``.gguf`` file or an offline package such as ``smollm2``) and loaded through
    ``AutoModelForCausalLM.from_pretrained`` with ``dtype`` bf16 on CUDA and fp32 on CPU
    (unless ``cfg.dtype``), on ``resolve_device(cfg.device)``, in eval mode, left padding,
    pad token = eos when missing. A worker keeps one GPU's copy at a time
    (:func:`sparkrag.generation.llm.device_cached`). Generation is greedy with ``cfg.max_new_tokens``,
    stopping at the model's eos ids, the tokenizer's eos and ``<|eot_id|>``.

    Args:
        cfg: the generator config; ``kind`` is not looked at.

    Returns:
        ``load()``; ``load()(prompts)`` returns one :class:`Generation` per prompt, in order.
        ``load().tokenizer`` is the tokenizer to count prompt tokens with, ``load().style``
        the prompt style prompts must be written in.

    Raises:
        ModelContractError: (from the generator) when the model returns the wrong number of rows.

    Example:
        >>> generate = make_generate_fn(GeneratorConfig(kind="llm", model="smollm2"))()  # doctest: +SKIP
        >>> generate([prompt])[0].text  # doctest: +SKIP
    """

    def load() -> CausalLMGenerator:
        from sparkrag.generation.llm import device_cached, load_causal_lm, resolve_llm_source

        device = resolve_device(cfg.device)
        source = resolve_llm_source(cfg.model)
        tokenizer, model = device_cached(("sparkrag.generation.generate.model", source, cfg.dtype), device,
                                         lambda: load_causal_lm(source, cfg.dtype, device))
        return device_cached(("sparkrag.generation.generate.generator", cfg), device,
                             lambda: CausalLMGenerator(tokenizer, model, cfg, model_id=source.model_id))

    return load


def make_tokenizer_fn(cfg: "GeneratorConfig") -> Callable[[], Any]:
    """A zero-argument factory of the generator's tokenizer alone (left padding, pad = eos).

    For counting prompt tokens where the model itself is not needed. Cached per worker.

    Example:
        >>> tokenizer = make_tokenizer_fn(GeneratorConfig(kind="llm"))()  # doctest: +SKIP
    """

    def load() -> Any:
        from sparkrag.generation.llm import load_llm_tokenizer, resolve_llm_source

        source = resolve_llm_source(cfg.model)
        return worker_cached(("sparkrag.generation.generate.tokenizer", source), lambda: load_llm_tokenizer(source))

    return load
