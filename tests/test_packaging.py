"""The wheel as Databricks installs it: built like the bundle builds it (``pip wheel --no-deps``),
installed into a bare folder, and resolved by pip against Databricks 16.4 LTS ML's packages.

Needs PyPI (the build's setuptools, pip itself, the dependency resolution); skips, saying so,
only when PyPI cannot be reached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_FILE = ROOT / "resources" / "databricks" / "runtime-16.4-ml.txt"
# 15.4 LTS ML (Python 3.11, Spark 3.5.0), the other runtime sparkrag supports: its versions of
# the packages the wheel asks for (release notes, as in databricks/environments
# python/dbr/15.4.x-gpu-ml-scala2.12/constraints.txt).
RUNTIME_15_4 = {"numpy": "1.23.5", "pyyaml": "6.0", "matplotlib": "3.7.2", "torch": "2.3.1",
                "transformers": "4.41.2", "pandas": "1.5.3", "pyarrow": "14.0.1"}
# What a Databricks ML runtime brings itself; the wheel must not install any of them.
RUNTIME_STACK = {"pyspark", "torch", "transformers", "pandas", "pyarrow", "tokenizers", "huggingface-hub",
                 "safetensors", "accelerate", "delta-spark", "deltalake"}
# Runtime packages no chromadb release leaves alone (every release since 0.4 has these floors):
# pip must change them and nothing else. Each entry is checked to still be needed.
UNAVOIDABLE = {
    "bcrypt": "chromadb requires bcrypt>=4.0.1; 16.4 LTS ML has 3.2.0",
    "tenacity": "chromadb requires tenacity>=8.2.3; 16.4 LTS ML has 8.2.2",
}
# Databricks 16.4 LTS ML: CPython 3.12 on x86_64 Ubuntu 24.04 (glibc 2.39).
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
          *[arg for tag in [f"manylinux_2_{g}_x86_64" for g in (39, 35, 34, 31, 28, 27, 24, 17, 12, 5)]
            + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
            for arg in ("--platform", tag)],
          "--only-binary=:all:"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_pins() -> dict[str, str]:
    """name -> version of every package in resources/databricks/runtime-16.4-ml.txt."""
    pins = {}
    for line in RUNTIME_FILE.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{RUNTIME_FILE.name}: expected name==version, got {line!r}"
            pins[_norm(name)] = version
    return pins


def _pypi_or_skip() -> None:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=20).close()
    except OSError as exc:
        pytest.skip(f"PyPI unreachable ({exc}): cannot build the wheel or resolve its dependencies")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd[:6]))}... failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built as databricks.yml's artifact builds it, from a clean copy of the tree."""
    _pypi_or_skip()
    src = tmp_path_factory.mktemp("src") / "sparkrag"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", "build", "dist", "*.egg-info", "__pycache__", ".git", "data", "spark-warehouse", "metastore_db"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)])
    (built,) = out.glob("sparkrag-*.whl")
    return built


@pytest.fixture(scope="module")
def requires(wheel) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        meta = Parser().parsestr(zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    return [Requirement(r) for r in meta.get_all("Requires-Dist") or []]


def test_wheel_ships_every_query_and_config_and_nothing_else_of_resources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind, suffix in (("sql", ".sql"), ("config", ".yaml")):
        repo = {p.name for p in (ROOT / "resources" / kind).glob(f"*{suffix}")}
        shipped = {Path(n).name for n in names if n.startswith(f"sparkrag/resources/{kind}/")}
        assert repo and shipped == repo, (kind, repo ^ shipped)
    assert {"sparkrag/py.typed", "sparkrag/jobs/sql.py", "sparkrag/pipelines/sql.py", "sparkrag/shipped.py", "sparkrag/hf_compat.py"} <= names
    extra = [n for n in names if n.startswith("sparkrag/resources/") and not re.match(r"sparkrag/resources/(sql|config)/", n)]
    assert not extra, f"unexpected files in the wheel: {extra}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "resources/"))]


def test_install_requires_holds_only_what_the_runtimes_lack_with_floors_they_meet(requires):
    base = [r for r in requires if r.marker is None]
    assert {_norm(r.name) for r in base} == {"chromadb", "bm25s", "pystemmer", "numpy", "pyyaml", "matplotlib"}
    assert not RUNTIME_STACK & {_norm(r.name) for r in base}
    pins = runtime_pins()
    for req in base:
        for runtime, versions in (("16.4 LTS ML", pins), ("15.4 LTS ML", RUNTIME_15_4)):
            have = versions.get(_norm(req.name))
            if have is not None:
                assert req.specifier.contains(have), f"{req} is not met by {runtime}'s {req.name} {have}"


def _extras(requires: list[Requirement]) -> dict[str, list[Requirement]]:
    out: dict[str, list[Requirement]] = {}
    for req in requires:
        for extra in re.findall(r'extra == "([^"]+)"', str(req.marker or "")):
            out.setdefault(extra, []).append(req)
    return out


def test_extras_admit_no_transformers_5_with_torch_below_2_6(requires):
    extras = _extras(requires)
    assert {"models", "delta-rs", "cluster", "local", "test"} <= set(extras)
    for name, reqs in extras.items():
        by_name = {_norm(r.name): r for r in reqs}
        if "transformers" in by_name:
            allows_5 = any(by_name["transformers"].specifier.contains(v) for v in ("5.0.0", "5.24.0"))
            assert "torch" in by_name, f"[{name}] has transformers but leaves torch open"
            if allows_5:
                assert not by_name["torch"].specifier.contains("2.5.1"), f"[{name}] admits transformers 5 + torch 2.5"
            assert by_name["transformers"].specifier.contains(RUNTIME_15_4["transformers"])  # 4.4x stays supported
    assert "deltalake" in {_norm(r.name) for r in extras["delta-rs"]} and "deltalake" in {_norm(r.name) for r in extras["local"]}


INSTALLED_PROBE = """
import json, sys
import sparkrag
from sparkrag.config import RagConfig, load_config
from sparkrag.jobs._common import config_path
from sparkrag.pipelines.sql import find_sql_file
cfg = load_config(RagConfig, config_path("databricks"))
print(json.dumps({"package": sparkrag.__file__, "sql": str(find_sql_file("run_summary")),
                  "config": config_path("databricks"), "local": config_path("local.yaml"),
                  "backend": cfg.tables.backend}))
"""


def test_installed_wheel_finds_its_queries_and_configs_without_a_checkout(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)])
    env = dict(os.environ, PYTHONPATH=str(target))  # before the editable install of this checkout
    got = json.loads(_run([sys.executable, "-c", INSTALLED_PROBE], cwd=elsewhere, env=env).stdout.splitlines()[-1])
    pkg = target / "sparkrag"
    assert Path(got["package"]).parent == pkg  # the wheel's copy, not the checkout's
    assert Path(got["sql"]) == pkg / "resources" / "sql" / "run_summary.sql"
    assert Path(got["config"]) == pkg / "resources" / "config" / "databricks.yaml"
    assert Path(got["local"]) == pkg / "resources" / "config" / "local.yaml"
    assert got["backend"] == "native"
    # The console script, as a cluster runs it: lists every shipped query.
    listed = _run([str(target / "bin" / "sparkrag-sql"), "--list"], cwd=elsewhere, env=env).stdout
    assert {line.split()[0] for line in listed.splitlines() if line.strip()} == {
        p.stem for p in (ROOT / "resources" / "sql").glob("*.sql")}
    assert "Run summary" in listed


def _fake_runtime(site: Path, pins: dict[str, str]) -> None:
    """Metadata for every runtime package, so pip sees them installed (as on the cluster)."""
    for name, version in pins.items():
        version = version.replace(".*", ".0")
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")


def test_wheel_installs_on_databricks_16_4_ml_changing_no_runtime_package(wheel, tmp_path):
    """One pip resolution of the wheel against 16.4 LTS ML: its packages installed and pinned.

    pip runs with only the runtime's packages visible (``-S``: none of this venv's), for
    CPython 3.12 on manylinux x86_64, with every runtime package pinned except the few
    chromadb forces up (UNAVOIDABLE). The report lists what pip would install: new packages
    only, apart from those. A recent pip is fetched for the run (pip >= 25 allows --platform
    with --dry-run; this venv's may be older).
    """
    pins = runtime_pins()
    site, pipdir = tmp_path / "runtime-site", tmp_path / "pip"
    _fake_runtime(site, pins)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
          "--dest", str(pipdir), "pip>=25"])
    (pip_wheel,) = pipdir.glob("pip-*.whl")
    constraints = tmp_path / "runtime-pins.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins.items() if n not in UNAVOIDABLE))
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-S", str(pip_wheel / "pip"), "install", "--dry-run", "--quiet", "--report", str(report),
         *TARGET, "-c", str(constraints), str(wheel)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
             **{k: v for k, v in os.environ.items()  # network settings only: proxies, certificates, pip's own
                if k.lower().endswith("_proxy") or k.startswith(("PIP_", "SSL_CERT_")) or k == "REQUESTS_CA_BUNDLE"}})
    assert out.returncode == 0, f"sparkrag cannot install on 16.4 LTS ML without changing it:\n{out.stderr[-5000:]}"
    installs = {_norm(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert "sparkrag" in installs and {"chromadb", "bm25s"} <= set(installs), installs
    changed = {n: (pins[n], v) for n, v in installs.items() if n in pins}
    assert set(changed) == set(UNAVOIDABLE), (
        f"runtime packages pip would change: {changed}; expected only {sorted(UNAVOIDABLE)} ({UNAVOIDABLE})")
    for name, (old, new) in changed.items():
        assert Version(new) > Version(old), (name, old, new)
    assert not RUNTIME_STACK & set(installs), f"the wheel pulls in the runtime's own {RUNTIME_STACK & set(installs)}"
