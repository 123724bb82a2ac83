"""The Databricks bundle: job YAML parses as Jobs API settings, entry points exist, the
parameters build a valid config, and only the answer task's cluster asks for GPUs."""

from __future__ import annotations

import importlib
import re
import runpy
from pathlib import Path

import pytest
import setuptools
import yaml
from databricks.sdk.service.jobs import JobSettings, Task

from sparkrag.config import RagConfig

ROOT = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((ROOT / "resources").glob("*.job.yml"))
_JOB_PARAM = re.compile(r"\{\{\s*job\.parameters\.([A-Za-z_]\w*)\s*\}\}")
_BUNDLE_REF = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def bundle() -> dict:
    return _load(ROOT / "databricks.yml")


@pytest.fixture(scope="module")
def jobs() -> dict[str, dict]:
    found = {}
    for path in JOB_FILES:
        for key, job in _load(path)["resources"]["jobs"].items():
            found[key] = job
    assert found, "no jobs in resources/*.job.yml"
    return found


@pytest.fixture(scope="module")
def setup_kwargs(monkeypatch_module) -> dict:
    """What setup.py passes to setuptools.setup (run for real, with setup() captured)."""
    captured: dict = {}
    monkeypatch_module.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch_module.chdir(ROOT)  # setup.py reads README.md relative to itself
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return captured


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _clusters(job: dict) -> dict[str, dict]:
    return {c["job_cluster_key"]: c["new_cluster"] for c in job.get("job_clusters", [])}


def _wheel_tasks(jobs: dict) -> list[dict]:
    return [t for job in jobs.values() for t in job["tasks"] if "python_wheel_task" in t]


def test_bundle_header_artifact_and_includes(bundle):
    assert bundle["bundle"]["name"] == "sparkrag"
    artifact = bundle["artifacts"]["sparkrag_wheel"]
    assert artifact["type"] == "whl" and (ROOT / artifact["path"] / "setup.py").is_file()
    assert "--wheel-dir dist" in artifact["build"]
    included = {p for pattern in bundle["include"] for p in ROOT.glob(pattern)}
    assert set(JOB_FILES) <= included
    assert set(bundle["targets"]) == {"dev", "prod"} and bundle["targets"]["dev"]["default"] is True
    # The wheel the tasks install is the one the artifact builds (paths relative to resources/).
    for job_file in JOB_FILES:
        for task in _wheel_tasks(_load(job_file)["resources"]["jobs"]):
            whl = [lib["whl"] for lib in task["libraries"]]
            assert whl == ["../dist/*.whl"], task["task_key"]
            assert (job_file.parent / "../dist").resolve() == (ROOT / "dist").resolve()


def test_jobs_round_trip_through_the_jobs_api_classes(jobs):
    for key, job in jobs.items():
        settings = JobSettings.from_dict(job)
        # from_dict drops what the Jobs API does not know: a misspelled or misplaced key
        # anywhere (task, cluster, wheel task) makes the round trip differ.
        assert settings.as_dict() == job, key
        assert [t.task_key for t in settings.tasks] == [t["task_key"] for t in job["tasks"]]
        for task in settings.tasks:
            assert Task.from_dict(task.as_dict()).as_dict() == task.as_dict()
            assert task.job_cluster_key in _clusters(job), task.task_key
            assert all(dep.task_key in {t.task_key for t in settings.tasks} for dep in task.depends_on or [])


def test_workflow_order_and_clusters(jobs):
    job = jobs["rag_workflow"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert [d["task_key"] for d in tasks["answer"]["depends_on"]] == ["ingest"]
    assert [d["task_key"] for d in tasks["evaluate"]["depends_on"]] == ["answer"]
    assert job["max_concurrent_runs"] == 1  # one writer per embedded Chroma directory
    assert {tasks[t]["python_wheel_task"]["entry_point"] for t in tasks} == {
        "sparkrag-ingest", "sparkrag-answer", "sparkrag-evaluate"}


def test_only_the_answer_task_requests_gpus(jobs):
    job = jobs["rag_workflow"]
    clusters = _clusters(job)
    for task in job["tasks"]:
        cluster = clusters[task["job_cluster_key"]]
        conf = cluster.get("spark_conf", {})
        gpu_conf = {k: v for k, v in conf.items() if "resource.gpu" in k}
        if task["python_wheel_task"]["entry_point"] == "sparkrag-answer":
            assert "gpu-ml" in cluster["spark_version"]
            assert float(conf["spark.executor.resource.gpu.amount"]) >= 1
            # A whole GPU per task: one model copy per GPU, never two tasks sharing one.
            assert float(conf["spark.task.resource.gpu.amount"]) == 1
        else:
            assert "cpu-ml" in cluster["spark_version"] and not gpu_conf, task["task_key"]


def test_entry_points_are_console_scripts_with_importable_mains(jobs, setup_kwargs):
    assert setup_kwargs["name"] == "sparkrag"
    scripts = dict(s.replace(" ", "").split("=", 1) for s in setup_kwargs["entry_points"]["console_scripts"])
    for task in _wheel_tasks(jobs):
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == setup_kwargs["name"]
        target = scripts[wheel["entry_point"]]  # KeyError: not declared in setup.py
        module_name, _, attr = target.partition(":")
        assert module_name.startswith("sparkrag.jobs.") and "sparkrag.jobs" in setup_kwargs["packages"]
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), target
    # sparkrag-sql is declared too and resolves to this package's jobs/sql.py.
    assert scripts["sparkrag-sql"] == "sparkrag.jobs.sql:main"
    assert callable(importlib.import_module("sparkrag.jobs.sql").main)


def test_every_reference_is_declared(bundle, jobs):
    variables = set(bundle["variables"])
    strings = _strings(bundle) + [s for job in jobs.values() for s in _strings(job)]
    used_vars = {ref[4:] for s in strings for ref in _BUNDLE_REF.findall(s) if ref.startswith("var.")}
    assert used_vars <= variables, used_vars - variables
    for target in bundle["targets"].values():
        assert set(target.get("variables", {})) <= variables
    for key, job in jobs.items():
        declared = [p["name"] for p in job["parameters"]]
        assert len(declared) == len(set(declared))
        used = {m for s in _strings(job["tasks"]) for m in _JOB_PARAM.findall(s)}
        assert used == set(declared), (key, set(declared) ^ used)  # none missing, none unused


def _resolve(text: str, variables: dict[str, str], params: dict[str, str]) -> str:
    text = _JOB_PARAM.sub(lambda m: params[m.group(1)], text)
    subs = {"workspace.file_path": str(ROOT)} | {f"var.{k}": str(v) for k, v in variables.items()}
    return _BUNDLE_REF.sub(lambda m: subs[m.group(1)], text)


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_task_arguments_build_a_valid_config(bundle, jobs, target):
    """Each task's parameters, with every default filled in, parse into a RagConfig."""
    variables = {k: v["default"] for k, v in bundle["variables"].items()}
    variables.update(bundle["targets"][target].get("variables", {}))
    job = jobs["rag_workflow"]
    params = {p["name"]: _resolve(p["default"], variables, {}) for p in job["parameters"]}
    configs, reports = {}, {}
    for task in _wheel_tasks(jobs):
        argv = [_resolve(a, variables, params) for a in task["python_wheel_task"]["parameters"]]
        entry = task["python_wheel_task"]["entry_point"].removeprefix("sparkrag-")
        module = importlib.import_module(f"sparkrag.jobs.{entry}")
        from sparkrag.jobs._common import base_parser, rag_config_from_args

        parser = module.build_parser() if hasattr(module, "build_parser") else base_parser(entry, "")
        args = parser.parse_args(argv)  # exits (SystemExit) on an option the job does not take
        reports[task["task_key"]] = getattr(args, "report_dir", None)
        assert Path(args.config).is_file() and args.config.endswith("resources/config/databricks.yaml")
        configs[task["task_key"]] = cfg = rag_config_from_args(args, getattr(module, "SHORTCUTS", None))
        assert isinstance(cfg, RagConfig)
    schema = "rag_dev" if target == "dev" else "rag"
    ingest, answer, evaluate = configs["ingest"], configs["answer"], configs["evaluate"]
    assert ingest.names.documents == f"main.{schema}.documents"
    assert answer.names.questions == f"main.{schema}.questions" == evaluate.names.questions
    assert ingest.names.chunks == answer.names.chunks == f"main.{schema}.chunks"
    assert answer.names.answers == evaluate.names.answers == f"main.{schema}.answers"
    assert ingest.names.runs == answer.names.runs == evaluate.names.runs == f"main.{schema}.runs"
    assert evaluate.names.chunks == ingest.names.chunks and evaluate.names.metrics == f"main.{schema}.metrics"
    # Every task reads the collection ingest writes.
    assert ingest.chroma == answer.chroma == evaluate.chroma
    assert answer.chroma.path == f"/Volumes/main/{schema}/chroma"
    assert reports["evaluate"] == f"/Volumes/main/{schema}/reports/{{eval_run_id}}"  # kept off the driver's disk
    assert answer.generator.kind == "chatqa" and answer.generator.model == "nvidia/Llama3-ChatQA-1.5-8B"
    assert answer.generator.dtype == "bfloat16" and answer.tables.backend == "native"
    # The cluster's task GPU amount alone schedules generation (see the job YAML's comment).
    gpu_conf = _clusters(job)["gpu_cluster"]["spark_conf"]
    assert answer.generator.task_gpus in (0, float(gpu_conf["spark.task.resource.gpu.amount"]))


# -- the runtime the bundle targets, against the README and the stack matrix ------------------
README = ROOT / "README.md"


def _readme_databricks_table() -> dict[str, tuple[str, str]]:
    """README "### Databricks" table: setting -> (ingest/evaluate cell, answer cell)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Databricks\n"):]
    section = section[: section.index("\n### ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = (cells[1], cells[2])
    assert rows, "README's Databricks section has no settings table"
    return rows


def _ticked(cell: str) -> str | None:
    found = re.findall(r"`([^`]+)`", cell)
    return found[0] if found else None


def _row(rows: dict[str, tuple[str, str]], key: str) -> tuple[str | None, str | None]:
    (label,) = [k for k in rows if key in k]
    return _ticked(rows[label][0]), _ticked(rows[label][1])


def test_clusters_run_the_runtime_the_stack_matrix_and_the_package_list_cover(jobs):
    job = jobs["rag_workflow"]
    versions = {c["spark_version"] for c in _clusters(job).values()}
    releases = {v.split(".x-")[0] for v in versions}
    assert releases == {"16.4"}, versions  # one runtime for every task
    assert all(re.fullmatch(r"16\.4\.x-(cpu|gpu)-ml-scala2\.12", v) for v in versions), versions
    # The package list the wheel is resolved against (tests/test_packaging.py) is this runtime's.
    runtime_list = ROOT / "resources" / "databricks" / "runtime-16.4-ml.txt"
    header = runtime_list.read_text(encoding="utf-8")
    assert "Apache Spark 3.5.2" in header and "Python 3.12" in header
    # Spark 3.5 with native Delta: the stack the README names for it, and the config's backend.
    readme = README.read_text(encoding="utf-8")
    assert "16.4 LTS ML (Spark 3.5.2, native Delta 3.x" in readme and "`STACK=spark3.5-native`" in readme
    assert _load(ROOT / "resources" / "config" / "databricks.yaml")["tables"]["backend"] == "native"


def test_readme_states_the_bundles_runtimes_node_types_and_gpu_settings(bundle, jobs):
    rows = _readme_databricks_table()
    job = jobs["rag_workflow"]
    clusters = _clusters(job)
    tasks = {t["task_key"]: clusters[t["job_cluster_key"]] for t in job["tasks"]}
    variables = {k: v["default"] for k, v in bundle["variables"].items()}

    cpu_runtime, gpu_runtime = _row(rows, "runtime")
    assert tasks["ingest"]["spark_version"] == tasks["evaluate"]["spark_version"] == cpu_runtime
    assert tasks["answer"]["spark_version"] == gpu_runtime

    cpu_node, gpu_node = _row(rows, "node type")
    for key in ("ingest", "evaluate"):
        assert tasks[key]["node_type_id"] == "${var.cpu_node_type}"
    assert tasks["answer"]["node_type_id"] == "${var.gpu_node_type}"
    assert (variables["cpu_node_type"], variables["gpu_node_type"]) == (cpu_node, gpu_node)

    for conf_key in ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount"):
        cpu_cell, gpu_cell = _row(rows, f"`{conf_key}`")
        assert cpu_cell is None  # "unset" on the CPU clusters
        assert all(conf_key not in tasks[k].get("spark_conf", {}) for k in ("ingest", "evaluate"))
        assert tasks["answer"]["spark_conf"][conf_key] == gpu_cell

    _, task_gpus = _row(rows, "`generator.task_gpus`")
    databricks_yaml = _load(ROOT / "resources" / "config" / "databricks.yaml")
    assert str(databricks_yaml["generator"]["task_gpus"]) == task_gpus


def test_every_task_installs_only_the_wheel(jobs):
    """chromadb, bm25s... come from the wheel's install_requires; torch and the rest from the runtime."""
    for task in _wheel_tasks(jobs):
        assert task["libraries"] == [{"whl": "../dist/*.whl"}], task["task_key"]
    for cluster in _clusters(jobs["rag_workflow"]).values():
        assert "init_scripts" not in cluster and "spark_env_vars" not in cluster
