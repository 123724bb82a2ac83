"""Generation throughput of a Llama-3-8B-shaped model through sparkrag's generator, on one GPU.

Prepared to run on a machine with torch and transformers but no pyspark and no network
(under 8 minutes on an H200): the model has the exact architecture of
meta-llama/Meta-Llama-3-8B (hence of nvidia/Llama3-ChatQA-1.5-8B) with random bf16 weights
built directly on the GPU; the tokenizer is a word-level one built in memory (``w<i>`` ->
token i), so every prompt has exactly ``--prompt-tokens`` tokens after BOS. The library's
:class:`sparkrag.generation.generate.CausalLMGenerator` (token-budget batching, left padding, greedy,
``inference_mode``) answers the prompts; Spark is not involved.

For each batch size, two timed passes: ``max_new_tokens=1`` (the prefill) and
``--new-tokens`` (prefill + decode). Printed: prompt tokens/s (prefill), generated tokens/s
(decode: extra tokens over the extra time), peak GPU memory, and the ratios to the bounds:
decode reads every weight plus the batch's KV cache once per step, so tokens/s <= batch x
bandwidth / (weight bytes + KV bytes); prefill is compute-bound, <= peak FLOP/s / (2 x
params + attention) per token. Random weights rarely emit a stop token, so rows generate
``--new-tokens`` (checked: a row that stops early is reported).

    python benchmarks/gpu_generate.py                     # the H200 run (defaults below)
    python benchmarks/gpu_generate.py --tiny              # CPU smoke check of the script itself
    python benchmarks/gpu_generate.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

# meta-llama/Meta-Llama-3-8B config.json
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY = dict(LLAMA3_8B, vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
H200_BANDWIDTH = 4.8e12  # bytes/s, HBM3e
H200_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=131072,
                        help="generator.max_batch_tokens: large enough that each batch size runs as one batch")
    parser.add_argument("--bandwidth", type=float, default=H200_BANDWIDTH, help="bytes/s for the decode bound")
    parser.add_argument("--flops", type=float, default=H200_BF16_FLOPS, help="FLOP/s for the prefill bound")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU: checks the script only")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser.parse_args(argv)


def _tokenizer(vocab_size: int):
    """A word-level tokenizer: "w17" is token 17; ids 0-2 are BOS, EOS and EOT."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|eot_id|>": 2,
             **{f"w{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|end_of_text|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", pad_token="<|end_of_text|>",
                                   padding_side="left")


def _model(shape: dict, device: str):
    """A random Llama-3-8B-shaped model, initialised in bf16 directly on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, bos_token_id=0, eos_token_id=[1, 2])
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # no 32 GB fp32 detour
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def _prompts(n: int, length: int, vocab_size: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(3, vocab_size)}" for _ in range(length)) for _ in range(n)]


def _bounds(params: int, shape: dict, batch: int, prompt: int, new: int, bandwidth: float,
            flops: float) -> tuple[float, float]:
    """(prefill prompt tokens/s bound, decode generated tokens/s bound)."""
    head = shape["hidden_size"] // shape["num_attention_heads"]
    kv_per_token = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head * 2  # K and V, bf16
    decode_step_bytes = params * 2 + batch * (prompt + new / 2) * kv_per_token
    attention_flops = 2 * shape["num_hidden_layers"] * shape["hidden_size"] * prompt  # QK^T and AV, causal mean
    return flops / (2 * params + attention_flops), batch * bandwidth / decode_step_bytes


def _timed(generate, prompts: list[str], new_tokens: int, cuda: bool) -> tuple[float, list]:
    import torch

    generate.generation_config.max_new_tokens = new_tokens
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = generate(prompts)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started, out


def measure(generate, prompts: list[str], batch: int, args, shape: dict, params: int, cuda: bool) -> dict:
    """One batch size: prefill pass, full pass, figures and ratios."""
    import torch

    rows = prompts[:batch]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    batches_before = generate.batches_run
    prefill_s, _ = _timed(generate, rows, 1, cuda)
    total_s, out = _timed(generate, rows, args.new_tokens, cuda)
    errors = [g.error for g in out if g.error]
    prompt_tokens = sum(g.prompt_tokens or 0 for g in out)
    generated = sum(g.completion_tokens or 0 for g in out)
    decode_s = max(total_s - prefill_s, 1e-9)
    prefill_bound, decode_bound = _bounds(params, shape, batch, args.prompt_tokens + 1, args.new_tokens,
                                          args.bandwidth, args.flops)
    row = dict(batch=batch, generate_calls=(generate.batches_run - batches_before) // 2,
               prompt_tokens_per_row=prompt_tokens / len(out), prefill_s=prefill_s, total_s=total_s,
               prompt_tokens_per_s=prompt_tokens / prefill_s,
               generated_tokens_per_s=(generated - len(out)) / decode_s,  # tokens after the first
               end_to_end_generated_tokens_per_s=generated / total_s,
               short_rows=sum((g.completion_tokens or 0) < args.new_tokens for g in out),
               peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
               prefill_bound_tokens_per_s=prefill_bound, decode_bound_tokens_per_s=decode_bound, errors=len(errors))
    row["prefill_vs_bound"] = row["prompt_tokens_per_s"] / prefill_bound
    row["decode_vs_bound"] = row["generated_tokens_per_s"] / decode_bound
    print(f"batch {batch:3d} ({row['generate_calls']} call): prompt {row['prompt_tokens_per_s']:9.0f} tok/s "
          f"({100 * row['prefill_vs_bound']:5.1f}% of compute bound), generated {row['generated_tokens_per_s']:8.1f} "
          f"tok/s ({100 * row['decode_vs_bound']:5.1f}% of HBM bound {decode_bound:8.0f}), "
          f"prefill {prefill_s:6.2f} s, total {total_s:6.2f} s, peak {row['peak_gib']:6.1f} GiB, "
          f"short rows {row['short_rows']}, errors {len(errors)}" + (f" (first: {errors[0]})" if errors else ""),
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    from sparkrag.config import GeneratorConfig
    from sparkrag.generation.generate import CausalLMGenerator

    cuda = not args.tiny
    if cuda and not torch.cuda.is_available():
        print("gpu_generate: no CUDA device visible to torch; nothing to measure (--tiny checks the script on CPU).")
        return 0  # not a failure of run_all.py on CPU machines
    shape = TINY if args.tiny else LLAMA3_8B
    sizes = [2, 4] if args.tiny else [int(b) for b in args.batch_sizes.split(",")]
    if args.tiny:
        args.prompt_tokens, args.new_tokens = 200, 8
    device = "cpu" if args.tiny else "cuda"
    started = time.perf_counter()
    model = _model(shape, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {params / 1e9:.2f}B parameters (bf16) on {device} in {time.perf_counter() - started:.1f} s; "
          f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if cuda else ""), flush=True)
    cfg = GeneratorConfig(kind="llm", model="random-llama3-8b", prompt_style="chatqa", device=device,
                          max_new_tokens=args.new_tokens, max_prompt_tokens=args.prompt_tokens + args.new_tokens + 8,
                          batch_size=max(sizes), max_batch_tokens=args.max_batch_tokens, dtype="bfloat16")
    generate = CausalLMGenerator(_tokenizer(shape["vocab_size"]), model, cfg)
    prompts = _prompts(max(sizes), args.prompt_tokens, shape["vocab_size"])
    _timed(generate, prompts[:2], 4, cuda)  # warm-up: kernels, allocator
    results = [measure(generate, prompts, batch, args, shape, params, cuda) for batch in sizes]
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
