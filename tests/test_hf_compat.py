"""sparkrag.hf_compat against the installed transformers (5.x here, 4.4x on Databricks ML runtimes).

The accelerate and torch checks run in a subprocess whose sys.path starts with a folder holding
a distribution's metadata (``accelerate-0.20.0.dist-info``...): transformers' own checks then
read that version, as they would for a real install of it. Nothing of transformers is faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparkrag.errors import DependencyError
from sparkrag.hf_compat import accelerate_available, dtype_keyword, pretrained_kwargs, require_torch_backend


def _shadow(root: Path, name: str, version: str, *, package: bool) -> Path:
    """A folder that makes ``name`` look installed at ``version`` (metadata; a package dir if asked)."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if package:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
    return root


def _probe(path: Path, code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         env={"PYTHONPATH": os.pathsep.join([str(path)] + ([os.environ["PYTHONPATH"]]
                                                                           if os.environ.get("PYTHONPATH") else [])),
                              "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


ACCELERATE_PROBE = """
import importlib.util, json
from sparkrag.hf_compat import accelerate_available
print(json.dumps({"find_spec": importlib.util.find_spec("accelerate") is not None,
                  "available": accelerate_available()}))
"""


@pytest.mark.parametrize("version, expected", [("0.20.0", False), ("1.5.2", True)])
def test_accelerate_check_applies_transformers_minimum_version(tmp_path, version, expected):
    """An accelerate too old for transformers is importable (find_spec says yes) but not usable."""
    got = _probe(_shadow(tmp_path, "accelerate", version, package=True), ACCELERATE_PROBE)
    assert got["find_spec"] is True  # what the old importlib.util.find_spec check saw
    assert got["available"] is expected


def test_accelerate_check_in_this_environment_is_transformers_verdict():
    from transformers.utils import is_accelerate_available

    assert accelerate_available() is bool(is_accelerate_available())


TORCH_PROBE = """
import json
from transformers.utils import is_torch_available
from sparkrag.errors import DependencyError
from sparkrag.hf_compat import require_torch_backend
try:
    require_torch_backend()
    error = None
except DependencyError as exc:
    error = str(exc)
print(json.dumps({"transformers_sees_torch": is_torch_available(), "error": error}))
"""


def test_torch_too_old_for_transformers_fails_with_both_versions(tmp_path):
    """torch 2.5 metadata: transformers 5 disables its torch backend, and sparkrag says why."""
    import transformers

    got = _probe(_shadow(tmp_path, "torch", "2.5.0", package=False), TORCH_PROBE)
    # Whatever the installed transformers decides, the check agrees with it...
    assert (got["error"] is None) is got["transformers_sees_torch"]
    if int(transformers.__version__.split(".")[0]) >= 5:
        # ...and transformers 5 refuses torch < 2.6: the error names both versions and the fix.
        assert got["error"] is not None
        assert "torch 2.5.0" in got["error"] and f"transformers {transformers.__version__}" in got["error"]
        assert "torch>=2.6" in got["error"]


def test_installed_pair_is_usable():
    require_torch_backend()  # the project's own environment must not be a broken pair


def test_pretrained_kwargs_load_the_weights_in_the_asked_dtype(minilm_path):
    """The dtype keyword is honoured (4.x ignores or rejects ``dtype=``; 5.x warns on ``torch_dtype=``)."""
    import torch
    from transformers import AutoModel

    assert dtype_keyword() in ("dtype", "torch_dtype")
    model = AutoModel.from_pretrained(minilm_path, **pretrained_kwargs(torch.bfloat16))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_dependency_error_is_an_import_error():
    assert issubclass(DependencyError, ImportError)
