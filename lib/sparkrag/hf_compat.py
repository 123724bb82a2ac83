"""Transformers 4.4x (what Databricks ML runtimes ship) and 5.x: the calls that differ, by capability.

Databricks 15.4 LTS ML has transformers 4.41 with torch 2.3, 16.4 LTS ML transformers 4.50
with torch 2.6; laptops and CI run transformers 5. What differs for sparkrag:

- the dtype keyword of ``from_pretrained``: ``dtype=`` in 5.x (``torch_dtype=`` still works
  there but warns), ``torch_dtype=`` in 4.x, where ``dtype=`` reaches the model's
  ``__init__`` and fails. :func:`pretrained_kwargs` picks the name the installed version
  declares.
- transformers 5 disables its PyTorch backend when torch < 2.6 (``is_torch_available()`` is
  False and every model class becomes a placeholder that fails on use): a broken pair that
  pip can install. :func:`require_torch_backend` turns it into one clear error.
- whether accelerate is usable for ``device_map=``: transformers' own check, which also
  applies its minimum accelerate version (:func:`accelerate_available`).

Import-light: transformers is imported inside the functions, which run on executors.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any

from sparkrag.errors import DependencyError

__all__ = ["pretrained_kwargs", "dtype_keyword", "require_torch_backend", "accelerate_available"]


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def dtype_keyword() -> str:
    """``"dtype"`` where the installed transformers declares it (5.x), else ``"torch_dtype"`` (4.x).

    Example:
        >>> dtype_keyword() in ("dtype", "torch_dtype")
        True
    """
    from transformers import PretrainedConfig

    return "dtype" if "dtype" in inspect.signature(PretrainedConfig.__init__).parameters else "torch_dtype"


def require_torch_backend() -> None:
    """Fail fast when transformers cannot use the installed torch.

    Raises:
        DependencyError: transformers reports no usable PyTorch (torch missing, or older than
            this transformers accepts: 5.x needs torch >= 2.6); the message names both versions.
    """
    from transformers.utils import is_torch_available

    if not is_torch_available():
        raise DependencyError(
            f"transformers {_version('transformers')} cannot use torch {_version('torch')} "
            "(transformers 5 needs torch >= 2.6): install torch>=2.6, or keep the runtime's "
            "transformers 4.x (pip install 'transformers<5')")


def accelerate_available() -> bool:
    """Whether ``from_pretrained(device_map=...)`` can be used: transformers' own accelerate check.

    Unlike a bare ``importlib.util.find_spec("accelerate")``, this also applies the minimum
    accelerate version the installed transformers needs (1.1 for transformers 5).
    """
    from transformers.utils import is_accelerate_available

    return bool(is_accelerate_available())


def pretrained_kwargs(dtype: Any) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` that load the weights in ``dtype`` on 4.x and 5.x.

    Checks first that transformers can use torch (:func:`require_torch_backend`).

    Example:
        >>> AutoModel.from_pretrained(path, **pretrained_kwargs(torch.float32))  # doctest: +SKIP
    """
    require_torch_backend()
    return {dtype_keyword(): dtype}
