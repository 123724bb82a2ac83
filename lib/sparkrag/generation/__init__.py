"""Generation: prompts, language models and the extractive fallback.

- :mod:`~sparkrag.generation.prompt`: ChatQA-1.5's prompt format and context packing
  within a token budget;
- :mod:`~sparkrag.generation.chat_prompt`: any other model's chat template, with the
  answer-only-from-context system message;
- :mod:`~sparkrag.generation.llm`: where a causal LM comes from (hub id, folder, GGUF file,
  offline package) and loading it once per worker and device;
- :mod:`~sparkrag.generation.generate`: batched ``generate()`` by token budget;
- :mod:`~sparkrag.generation.extractive`: the best sentence, for CPU runs without an LLM;
- :mod:`~sparkrag.generation.abstain`: whether an answer declines to answer.
"""
