"""Ingest, answer and evaluate on a real multi-node Spark cluster (standalone, on 127.0.0.1).

One master and two workers, each worker in its own mount namespace with a private /tmp
(tests/standalone_cluster.py): nothing the driver puts in its local temp dir is visible
to executors, as on separate machines. Tables, the Chroma index and the BM25 index live
on a shared folder outside /tmp, as on DBFS, a Unity Catalog volume or NFS, and are named
by paths relative to the driver's working directory (an executor's is another).

The jobs run in one ``spark-submit`` of tests/multinode_driver.py (one application: the
executors start, and load their models, once). The test process starts no Spark itself.

Stacks: :func:`stack_settings` says how to run on each (the native-Delta stacks add their
jars through ``SPARK_CONF_DIR``, spark3.5 a pyspark overlay on ``PYTHONPATH`` and that
pyspark's ``SPARK_HOME``); the stack is conftest's (``make test STACK=...``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from deltalake import DeltaTable

from standalone_cluster import StandaloneCluster, cluster_unavailable, default_spark_home

ROOT = Path(__file__).resolve().parents[1]
N_DOCS, N_QUESTIONS = 6, 6


def stack_settings(stack: str) -> dict:
    """How the cluster and its jobs run on ``stack``: extra Spark conf, environment, SPARK_HOME, backend.

    ``delta-rs`` needs nothing. The native stacks come from the stack machinery
    (``resources/stacks/stacks.py``: ``env(stack)`` gives ``SPARK_CONF_DIR`` with the Delta
    jars in its spark-defaults.conf, and for spark3.5 a pyspark overlay on ``PYTHONPATH``);
    SPARK_HOME is the folder of the pyspark that environment imports, so the daemons and
    spark-submit are that Spark's.
    """
    if stack == "delta-rs":
        return {"conf": {}, "env": {}, "spark_home": default_spark_home(), "backend": "delta-rs"}
    module = ROOT / "resources" / "stacks" / "stacks.py"
    if not module.exists():
        pytest.skip(f"STACK={stack}: no stack machinery ({module.relative_to(ROOT)}) in this checkout")
    spec = importlib.util.spec_from_file_location("sparkrag_stacks", module)
    stacks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stacks)
    env = stacks.env(stack)
    probe = subprocess.run([sys.executable, "-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"],
                           env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return {"conf": {}, "env": env, "spark_home": probe.stdout.strip(), "backend": "native"}


def _shared_base() -> Path:
    """A fresh folder outside /tmp: the "network share" every node sees (removed after)."""
    parent = Path(os.environ.get("SPARKRAG_MULTINODE_DIR") or ROOT / "build")
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="multinode-", dir=parent)).resolve()


def _sample(shared: Path) -> tuple[list[dict], list[dict]]:
    with open(ROOT / "resources" / "sample" / "documents.jsonl", encoding="utf-8") as fh:
        docs = [json.loads(line) for _, line in zip(range(N_DOCS), fh)]
    ids = {d["doc_id"] for d in docs}
    with open(ROOT / "resources" / "sample" / "questions.jsonl", encoding="utf-8") as fh:
        questions = [q for q in map(json.loads, fh) if q["doc_id"] in ids][:N_QUESTIONS]
    for name, rows in (("documents", docs), ("questions", questions)):
        with open(shared / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return docs, questions


def _plan(shared: Path, backend: str) -> dict:
    # Relative paths on purpose: resolved against the driver's working directory (the
    # shared folder), never an executor's.
    names = {"documents": "tables/documents", "questions": "tables/questions", "chunks": "tables/chunks",
             "answers": "tables/answers", "runs": "tables/runs", "rejects": "tables/rejects",
             "metrics": "tables/metrics"}
    common = [f"--set=names.{k}={v}" for k, v in names.items()] + [
        "--set=chroma.path=chroma", f"--set=tables.backend={backend}", "--set=chroma.shards=2",
        "--log-level=WARNING"]
    answer = [*common, "--retrieval-mode=hybrid"]
    return {
        "shared": str(shared),
        "result": str(shared / "result.json"),
        "tables": {"backend": backend},
        "documents_file": str(shared / "documents.jsonl"), "documents_table": names["documents"],
        "questions_file": str(shared / "questions.jsonl"), "questions_table": names["questions"],
        "jobs": [
            ["ingest", common],
            # auto on a cluster: snapshots of the Chroma shards and the BM25 index, shipped
            ["answer", [*answer, "--run-id=mn-snapshot"]],
            # shared: every executor opens the published folders in place (the answers
            # table exists now, so this run goes through the delta-rs merge)
            ["answer", [*answer, "--run-id=mn-shared", "--set=answer.chroma_access=shared"]],
            ["evaluate", [*common, "--run-id=mn-shared", "--ann-sample=4", "--report-dir=reports/{eval_run_id}"]],
        ],
    }


def test_ingest_answer_evaluate_on_a_two_worker_cluster(stack):  # conftest's stack: `make test STACK=...`
    stack = stack_settings(stack)
    shared = _shared_base()
    reason = cluster_unavailable(str(ROOT), str(shared))
    if reason:
        shutil.rmtree(shared, ignore_errors=True)
        pytest.skip(reason)
    try:
        docs, questions = _sample(shared)
        plan = _plan(shared, stack["backend"])
        (shared / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
        cluster = StandaloneCluster(shared / "cluster", workers=2, conf=stack["conf"], env=stack["env"],
                                    spark_home=stack["spark_home"])
        driver_log = shared / "driver.log"
        with cluster, open(driver_log, "wb") as log:
            out = subprocess.run(cluster.submit_command(str(ROOT / "tests" / "multinode_driver.py"),
                                                        str(shared / "plan.json")),
                                 env=cluster.driver_env(), cwd=shared, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=1800)
            assert out.returncode == 0, f"{driver_log.read_text(errors='replace')[-6000:]}\n{cluster.logs()}"
        result = json.loads((shared / "result.json").read_text(encoding="utf-8"))
        _check_cluster(result["probe"], cluster)
        _check_jobs(result["jobs"], len(docs), len(questions), shared)
        _check_tables(shared / "tables", docs, questions)
        _check_indexes(shared)
    finally:
        if not os.environ.get("SPARKRAG_MULTINODE_KEEP"):  # set it to inspect the logs and tables after a run
            shutil.rmtree(shared, ignore_errors=True)


def _check_cluster(probe: dict, cluster: StandaloneCluster) -> None:
    assert probe["master"] == cluster.master_url
    workers = {Path(d).parents[2].name for d in probe["task_dirs"]}
    assert workers == {"worker0", "worker1"}, probe["task_dirs"]  # both "nodes" ran tasks
    assert probe["driver_saw_own_tmp"] and not probe["tasks_saw_driver_tmp"], probe
    assert probe["tasks_saw_shared"], probe
    # get_spark leaves spark.default.parallelism to the cluster (its total cores)
    assert probe["default_parallelism_conf"] is None and probe["default_parallelism"] == 2, probe


def _check_jobs(jobs: list[dict], n_docs: int, n_questions: int, root: Path) -> None:
    assert [j["job"] for j in jobs] == ["ingest", "answer", "answer", "evaluate"]
    ingest, snapshot, shared, evaluate = (j["record"] for j in jobs)
    # (the evaluate record has no status: its run row is checked in _check_tables)
    assert all(r["status"] == "succeeded" for r in (ingest, snapshot, shared)), [j["record"].get("error") for j in jobs]
    assert ingest["counts"]["documents_new"] == n_docs and ingest["counts"]["chunks_embedded"] > 0, ingest["counts"]
    for run in (snapshot, shared):
        assert run["counts"]["answers"] == n_questions and run["counts"]["errors"] == 0, run["counts"]
    assert evaluate["run_id"] == "mn-shared"
    assert evaluate["counts"]["evaluated"] == n_questions, evaluate["counts"]
    assert evaluate["metrics"]["recall@5"] > 0.5, evaluate["metrics"]
    ann = [v for k, v in evaluate["metrics"].items() if k.startswith("ann_recall@")]  # @min(10, chunks)
    assert len(ann) == 1 and 0 <= ann[0] <= 1, evaluate["metrics"]
    assert (root / evaluate["report"]["report.md"]).is_file()  # relative to the driver's directory


def _check_tables(tables: Path, docs: list[dict], questions: list[dict]) -> None:
    chunks = DeltaTable(str(tables / "chunks")).to_pyarrow_table(columns=["doc_id", "embedding"]).to_pylist()
    assert {c["doc_id"] for c in chunks} == {d["doc_id"] for d in docs}
    assert all(len(c["embedding"]) == 384 for c in chunks)
    answers = DeltaTable(str(tables / "answers")).to_pyarrow_table().to_pylist()
    expected = sorted((q["question_id"], run) for q in questions for run in ("mn-snapshot", "mn-shared"))
    assert sorted((a["question_id"], a["run_id"]) for a in answers) == expected
    for a in answers:
        assert a["error"] is None, a["error"]
        assert a["contexts"] and all(c["text"] and c["doc_id"] for c in a["contexts"]), a["question_id"]
        assert a["abstained"] or a["answer"], a["question_id"]
    # the same questions, the same indexes: shipped snapshots and in-place reads agree
    by_run = {(a["run_id"], a["question_id"]): [c["chunk_id"] for c in a["contexts"]] for a in answers}
    for q in questions:
        assert by_run[("mn-snapshot", q["question_id"])] == by_run[("mn-shared", q["question_id"])]
    leftovers = [p for p in tables.rglob("*") if "_sparkrag_staging" in p.name]
    assert not leftovers, leftovers  # merge staging is cleaned up
    runs = DeltaTable(str(tables / "runs")).to_pyarrow_table(columns=["job", "status"]).to_pylist()
    assert sorted(r["job"] for r in runs if r["status"] == "succeeded") == ["answer", "answer", "evaluate", "ingest"]


def _check_indexes(shared: Path) -> None:
    manifest = json.loads((shared / "chroma" / "sparkrag.manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["dirs"]) == 2 and all((shared / "chroma" / d / "chroma.sqlite3").is_file()
                                              for d in manifest["dirs"])
    lexical = json.loads((shared / "chroma-lexical" / "bm25.manifest.json").read_text(encoding="utf-8"))
    assert len(lexical["dirs"]) == 2 and all((shared / "chroma-lexical" / d / "postings.npz").is_file()
                                             for d in lexical["dirs"])  # built by executor tasks, one per shard
    assert (shared / "chroma-lexical" / lexical["stats_dir"]).is_dir()
    # nothing landed in an executor's working directory (a relative path resolved there)
    stray = [p for p in (shared / "cluster").glob("worker*/work/app-*/*/*")
             if p.name in ("tables", "chroma", "chroma-lexical", "reports")]
    assert not stray, stray

