"""Generation throughput of a Llama-3-8B-shaped model through sparkrag.generate, on one GPU.

No hub access is needed: the model has the exact architecture of meta-llama/Meta-Llama-3-8B
(hence of nvidia/Llama3-ChatQA-1.5-8B) with random bf16 weights. It is saved to a local
folder and loaded back through ``make_generate_fn`` (the same ``from_pretrained`` path as
ChatQA), then answers ChatQA prompts of about ``--prompt-tokens`` tokens built from the
sample corpus with ``build_prompt``. For each batch size it prints tokens/s, peak GPU
memory and the memory-bandwidth roofline: each decode step reads every weight once plus
the batch's KV cache, so tokens/s <= batch / ((weights + KV bytes) / bandwidth).

Random weights rarely emit a stop token, so nearly every row generates ``--new-tokens``.
Not a test. Run: ``python benchmarks/gpu_generate.py [--smoke] [--out results.json]``.
``--smoke`` runs a 2-layer model on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_llama: a Llama-3-style tokenizer built offline

# meta-llama/Meta-Llama-3-8B config.json
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
SMOKE = dict(LLAMA3_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
H200_BANDWIDTH = 4.8e12  # bytes/s, HBM3e


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--bandwidth", type=float, default=H200_BANDWIDTH, help="bytes/s for the roofline")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script only")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser.parse_args(argv)


def _build_model(folder: Path, smoke: bool) -> tuple[str, int]:
    """Save a random bf16 Llama-3-8B (or the smoke model) with a Llama-3-style tokenizer."""
    import torch
    from tiny_llama import BOS, EOS, EOT, build_tiny_llama
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    build_tiny_llama(folder)  # writes the tokenizer; its tiny model files are overwritten below

    tok = AutoTokenizer.from_pretrained(folder)
    ids = [tok.convert_tokens_to_ids(t) for t in (BOS, EOS, EOT)]
    config = LlamaConfig(**(SMOKE if smoke else LLAMA3_8B), bos_token_id=ids[0], eos_token_id=ids[1:])
    device = "cpu" if smoke else "cuda"
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: no 32 GB fp32 detour
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.save_pretrained(folder)
    GenerationConfig(bos_token_id=ids[0], eos_token_id=ids[1:]).save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return str(folder), params


def _prompts(tokenizer, cfg, n: int) -> list[str]:
    """ChatQA prompts of about cfg.max_prompt_tokens - cfg.max_new_tokens tokens from the sample corpus."""
    from sparkrag.prompt import build_prompt

    with open(ROOT / "resources/sample/documents.jsonl", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    with open(ROOT / "resources/sample/questions.jsonl", encoding="utf-8") as fh:
        questions = [json.loads(line)["question"] for line in fh]
    prompts = []
    for i in range(n):
        contexts = [docs[(i * 7 + k) % len(docs)] for k in range(40)]  # more than fit: packing trims
        prompts.append(build_prompt(questions[i % len(questions)], [], contexts, tokenizer, cfg=cfg).text)
    return prompts


def _roofline(params: int, config: dict, batch: int, context: int, bandwidth: float) -> float:
    """Upper bound on decode tokens/s: weights + KV cache read once per step, bf16."""
    kv_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * (
        config["hidden_size"] // config["num_attention_heads"]) * 2
    step_bytes = params * 2 + batch * context * kv_per_token
    return batch * bandwidth / step_bytes


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_generate: no CUDA device visible to torch; nothing to measure (use --smoke to check the script).")
        return 0
    from sparkrag.config import GeneratorConfig
    from sparkrag.generate import make_generate_fn

    sizes = [int(b) for b in args.batch_sizes.split(",")] if not args.smoke else [2, 4]
    prompt_tokens, new_tokens = (args.prompt_tokens, args.new_tokens) if not args.smoke else (600, 8)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path, params = _build_model(Path(tmp) / "llama3-8b-random", args.smoke)
        print(f"built and saved {params / 1e9:.2f}B parameters in {time.perf_counter() - started:.0f} s")
        device = "cpu" if args.smoke else "cuda"
        base = GeneratorConfig(kind="chatqa", model=path, max_new_tokens=new_tokens, device=device,
                               max_prompt_tokens=prompt_tokens + new_tokens, dtype="bfloat16")
        started = time.perf_counter()
        generate = make_generate_fn(base)()
        print(f"loaded on {generate.model.device} ({generate.model.dtype}) in {time.perf_counter() - started:.0f} s")
        prompts = _prompts(generate.tokenizer, base, max(sizes))
        generate(prompts[:2])  # warm-up: kernels, allocator
        for batch in sizes:
            generate.batch_size = batch
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            out = generate(prompts[:batch])
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            errors = [g.error for g in out if g.error]
            generated = sum(g.completion_tokens or 0 for g in out)
            context = sum(g.prompt_tokens or 0 for g in out) / len(out) + new_tokens / 2
            roof = _roofline(params, SMOKE if args.smoke else LLAMA3_8B, batch, int(context), args.bandwidth)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            row = dict(batch=batch, seconds=seconds, tokens_per_s=generated / seconds, roofline_tokens_per_s=roof,
                       peak_gib=peak, mean_prompt_tokens=context - new_tokens / 2, errors=len(errors))
            results.append(row)
            print(f"batch {batch:3d}: {row['tokens_per_s']:8.1f} tok/s (roofline {roof:8.1f}, "
                  f"{100 * row['tokens_per_s'] / roof:5.1f}%), {seconds:6.1f} s, peak {peak:6.1f} GiB, "
                  f"prompt {row['mean_prompt_tokens']:.0f} tokens, errors {len(errors)}"
                  + (f" (first: {errors[0]})" if errors else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
