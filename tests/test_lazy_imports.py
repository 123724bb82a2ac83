"""lib/ stays import-light: importing any sparkrag module loads neither torch, transformers nor chromadb."""

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "sparkrag"
MODULES = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
                 if p.stem != "__init__")


@pytest.mark.parametrize("heavy", ["torch", "transformers", "chromadb"])
def test_importing_every_module_loads_no_heavy_library(heavy):
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}: importlib.import_module('sparkrag.' + m)\n"
        "import sparkrag.jobs.ingest, sparkrag.jobs.answer, sparkrag.jobs.demo\n"
        f"print({heavy!r} in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False", f"importing sparkrag loaded {heavy}"
