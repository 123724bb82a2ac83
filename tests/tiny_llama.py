"""A tiny Llama-3-shaped causal LM, built offline, for tests of the generation path.

The tokenizer is a byte-level BPE (~4k tokens) trained with the ``tokenizers`` library on
the bundled sample corpus, carrying Llama-3's special tokens and a post-processor that
prepends ``<|begin_of_text|>`` like Meta's tokenizer does. The model is a
``LlamaForCausalLM`` with 2 layers, hidden size 64, 4 heads and 2 key/value heads
(grouped-query attention, as in Llama-3-8B), random weights from a fixed seed. Both are
saved with ``save_pretrained`` plus a ``generation_config.json`` whose ``eos_token_id``
lists ``<|end_of_text|>`` and ``<|eot_id|>``, so the folder loads through the same
``AutoTokenizer`` / ``AutoModelForCausalLM`` code as nvidia/Llama3-ChatQA-1.5-8B.

Use the session fixture in a test module (tests/ is on ``sys.path`` under pytest's
rootdir conftest, since tests/ has no ``__init__.py``)::

    from tiny_llama import tiny_llama_path  # noqa: F401  (a pytest fixture)

    def test_something(tiny_llama_path): ...
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

__all__ = ["build_tiny_llama", "tiny_llama_path", "SPECIAL_TOKENS", "BOS", "EOS", "EOT"]

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
# Llama-3's first special tokens, in Meta's order (ids 128000..128009 there; 0..9 here).
SPECIAL_TOKENS = [
    BOS,
    EOS,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    EOT,
]
# Llama-3's pre-tokenizer split (tokenizer.json of meta-llama/Meta-Llama-3-8B).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_VOCAB_SIZE = 4096
_RESOURCES = Path(__file__).resolve().parents[1] / "resources"
_FALLBACK_TEXT = [
    "This is a chat between a user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "Apache Spark runs batch jobs on a cluster of executors; each executor runs Python workers.",
    "Delta tables store data as Parquet files plus a transaction log of JSON commits.",
    "A vector store keeps embeddings and finds the nearest neighbours of a query vector.",
    "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Sorry. I cannot find the answer based on the context.",
] * 40


def _training_lines() -> list[str]:
    """Texts of the bundled sample corpus when present, else a built-in paragraph list."""
    lines: list[str] = []
    for path in sorted(_RESOURCES.glob("**/*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for raw in fh:
                row = json.loads(raw)
                lines.extend(str(row[key]) for key in ("title", "text", "question") if row.get(key))
    return lines or list(_FALLBACK_TEXT)


def _train_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_lines(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # As Meta-Llama-3's tokenizer.json: byte-level offsets, then BOS before every sequence.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok


def _set_tokenizer_class(out: Path, name: str) -> None:
    """Name the tokenizer class as Llama-3 checkpoints do (transformers 5 writes its own)."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = name
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_tiny_llama(out_dir: str | Path, *, seed: int = 0) -> str:
    """Train the tokenizer, build the random tiny Llama and save both to ``out_dir``.

    Args:
        out_dir: folder to write (created when missing).
        seed: torch seed for the random weights; the same seed gives the same model.

    Returns:
        ``out_dir`` as a string, loadable with ``AutoTokenizer``/``AutoModelForCausalLM``.

    Example:
        >>> path = build_tiny_llama("/tmp/tiny-llama")  # doctest: +SKIP
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(), bos_token=BOS, eos_token=EOS, model_max_length=2048
    )
    tokenizer.save_pretrained(out)
    _set_tokenizer_class(out, "PreTrainedTokenizerFast")
    bos_id, eos_id, eot_id = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, EOT))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=500000.0,  # Llama-3's
        bos_token_id=bos_id,
        eos_token_id=[eos_id, eot_id],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=[eos_id, eot_id]).save_pretrained(out)
    return str(out)


_BUILT: dict[str, str] = {}


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> str:
    """A folder holding the tiny Llama and its tokenizer, built once per test session.

    Each module that imports this fixture gets its own fixture definition, which pytest
    would run once per module even at session scope: the module-level cache keeps it one build.
    """
    if "path" not in _BUILT:
        _BUILT["path"] = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return _BUILT["path"]
