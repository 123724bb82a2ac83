"""Cross-encoder re-ranking: a picklable loader of a (queries, passages) -> scores function.

Example:
    >>> load = make_rerank_fn("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
    >>> load()(["what is delta?"], ["Delta Lake is a storage layer."])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sparkrag.errors import ModelContractError
from sparkrag.models import resolve_device, resolve_model_path, worker_cached

__all__ = ["RerankFn", "make_rerank_fn"]

RerankFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (queries, passages) -> scores


def make_rerank_fn(model: str, *, batch_size: int = 16, max_length: int = 512,
                   device: str = "auto") -> Callable[[], RerankFn]:
    """A zero-argument, picklable loader of a cross-encoder scorer, loaded once per worker.

    The scorer takes (queries, passages) and returns one relevance score per pair (the
    logit for 1-label models, positive minus negative logit for 2-label ones); pairs are
    sorted by length into batches and scores returned in the input order.

    Example:
        >>> load = make_rerank_fn("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> load()(["what is delta?"], ["Delta Lake is a storage layer."])  # doctest: +SKIP
    """

    def load() -> RerankFn:
        return worker_cached(("cross-encoder", model, device, max_length, batch_size),
                             lambda: _load_cross_encoder(model, batch_size, max_length, device))

    return load


def _load_cross_encoder(model: str, batch_size: int, max_length: int, device: str) -> RerankFn:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    net = AutoModelForSequenceClassification.from_pretrained(path)
    where = resolve_device(device)
    net.to(where).eval()
    labels = int(net.config.num_labels)
    if labels not in (1, 2):
        raise ModelContractError(f"cross-encoder {model}: expected 1 or 2 labels, got {labels}")
    limit = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)

    def score(queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        order = sorted(range(len(passages)), key=lambda i: len(queries[i]) + len(passages[i]))
        out = np.zeros(len(passages), dtype=np.float32)
        with torch.inference_mode():
            for lo in range(0, len(order), batch_size):
                idx = order[lo:lo + batch_size]
                enc = tokenizer([queries[i] for i in idx], [passages[i] for i in idx], padding=True,
                                truncation="longest_first", max_length=limit, return_tensors="pt").to(where)
                logits = net(**enc).logits
                if tuple(logits.shape) != (len(idx), labels):
                    raise ModelContractError(f"cross-encoder {model}: expected logits ({len(idx)}, {labels}), "
                                             f"got {tuple(logits.shape)}")
                s = logits[:, 0] if labels == 1 else logits[:, 1] - logits[:, 0]
                out[idx] = s.float().cpu().numpy()
        return out

    return score
