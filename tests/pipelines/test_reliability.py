"""Issue #17 as scenarios: nothing lost, nothing leaked. Real local Spark, real Delta (whichever
backend the session has; only the Tables API and Spark are used), real embedded Chroma, real MiniLM.

* two ingests started at the same moment against one table root, twice (fresh tables, then
  new documents): every chunk once, Chroma equal to the table;
* two answer runs with one run id at the same moment: every (question_id, run_id) once;
* a live run's lock makes a second run fail fast (lock_wait_seconds=0) before any work; once
  that holder is killed -9, its lock expires and the next run proceeds;
* tables left with repeated chunk ids / answer keys (by an older, unlocked version) are healed
  by a plain rerun, without --full-refresh;
* null, empty and repeated question ids go to the rejects table; the other questions are answered;
* a document whose text is not UTF-8 is a reject naming row and column; the others are ingested;
* an unwritable tables.root / chroma.path / lexical.path fails before planning with one line;
* a local session listens on 127.0.0.1 only;
* secrets in spark.conf are redacted in the logged config, runs.config_json and error messages.

Sparkrag modules new with this issue are imported inside the tests, so that the file also runs
(and fails scenario by scenario) on the code before it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sparkrag.config import RagConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [json.loads(line) for line in (ROOT / "resources/sample/documents.jsonl").open(encoding="utf-8")]
QUESTIONS = [json.loads(line) for line in (ROOT / "resources/sample/questions.jsonl").open(encoding="utf-8")]
BASE_DOCS = [DOCS[i] for i in (0, 1, 30, 54, 78, 102)]
MORE_DOCS = [DOCS[i] for i in (126, 150, 180)]
BASE_QUESTIONS = [q for q in QUESTIONS if q["doc_id"] in {d["doc_id"] for d in BASE_DOCS}][:6]
BASE_RUN = "answer-base"
SECRET = "S3CR3T-d41d8cd98f00b204"
AZURE_SECRET = "AZ-ACCOUNT-KEY-9e107d9d372bb6826bd81d35"


# -- helpers -----------------------------------------------------------------------------
def settings(root: Path) -> dict[str, Any]:
    """The YAML settings of a test root (also read by the job subprocesses)."""
    return {"spark": {"master": "local[1]", "shuffle_partitions": 2,
                      "conf": {"spark.ui.enabled": "false", "spark.driver.memory": "1g"}},
            "tables": {"root": str(root / "tables")}, "chroma": {"path": str(root / "chroma"), "collection": "rel"},
            "documents": {"metadata": ["source", "lang"]}, "chunking": {"max_tokens": 96, "overlap_tokens": 16}}


def config_file(root: Path) -> Path:
    import yaml

    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(settings(root)), encoding="utf-8")
    return path


def make_cfg(root: Path, *overrides: str) -> RagConfig:
    return load_config(RagConfig, config_file(root), list(overrides))


def tables_of(spark, cfg: RagConfig):
    from sparkrag.delta import open_tables

    return open_tables(spark, cfg.tables)


def write_docs(spark, cfg: RagConfig, docs: list[dict[str, Any]]) -> None:
    df = spark.createDataFrame(docs, "doc_id string, title string, text string, source string, lang string")
    tables_of(spark, cfg).write(df, cfg.names.documents, mode="overwrite")


def write_questions(spark, cfg: RagConfig, rows: list[dict[str, Any]]) -> None:
    df = spark.createDataFrame([{"question_id": q["question_id"], "question": q["question"]} for q in rows],
                               "question_id string, question string")
    tables_of(spark, cfg).write(df, cfg.names.questions, mode="overwrite")


def rows_of(spark, cfg: RagConfig, table: str) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in tables_of(spark, cfg).read(table).collect()]


def chunk_counts(spark, cfg: RagConfig) -> tuple[int, int, set[str]]:
    """(rows, distinct chunk ids, doc ids) of the chunks table."""
    from pyspark.sql import functions as F

    chunks = tables_of(spark, cfg).read(cfg.names.chunks)
    row = chunks.agg(F.count("*").alias("n"), F.countDistinct("chunk_id").alias("ids")).first()
    return int(row["n"]), int(row["ids"]), {r.doc_id for r in chunks.select("doc_id").distinct().collect()}


def chroma_ids(cfg: RagConfig) -> list[str]:
    from sparkrag.index.shards import open_index, resolve_shards

    return list(open_index(cfg.chroma, resolve_shards(cfg.chroma)).get(include=[])["ids"])


def clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("config.yaml", "_sparkrag_locks", "*.out", "*.err"))
    return dst


def job_env() -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def run_jobs_together(job: str, root: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """Start two ``jobs/<job>.py`` processes at the same moment; wait for both."""
    cmd = [sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--config", str(config_file(root)), *args,
           "--log-level", "WARNING"]
    # Output to files, not pipes: a process blocked on a full pipe would hold its lock forever.
    logs = [(root / f"{job}-{i}.out", root / f"{job}-{i}.err") for i in range(2)]
    procs = []
    for out, err in logs:
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append(subprocess.Popen(cmd, cwd=root, env=job_env(), stdout=fo, stderr=fe, text=True,
                                          start_new_session=True))  # its own group: killed with its JVM
    try:
        for proc in procs:
            proc.wait(timeout=1200)  # a loaded 2-core machine runs two JVMs slowly; the second waits
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return [subprocess.CompletedProcess(cmd, p.returncode, o.read_text(), e.read_text())
            for p, (o, e) in zip(procs, logs)]


def assert_succeeded_or_refused(results: list[subprocess.CompletedProcess]) -> None:
    """Each process either succeeded or was refused with a one-line lock message; at least one succeeded."""
    ok = [r for r in results if r.returncode == 0]
    assert ok, "\n".join(r.stderr[-3000:] for r in results)
    for r in results:
        if r.returncode:
            assert "LockError" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]


# -- the shared starting state -------------------------------------------------------------
@pytest.fixture(scope="module")
def base(spark, tmp_path_factory) -> Path:
    """BASE_DOCS ingested and BASE_QUESTIONS answered (run BASE_RUN), in-process."""
    from sparkrag.pipelines.answer import run_answer
    from sparkrag.pipelines.ingest import run_ingest

    root = tmp_path_factory.mktemp("reliability-base")
    cfg = make_cfg(root)
    write_docs(spark, cfg, BASE_DOCS)
    write_questions(spark, cfg, BASE_QUESTIONS)
    assert run_ingest(spark, cfg)["status"] == "succeeded"
    assert run_answer(spark, make_cfg(root, f"answer.run_id={BASE_RUN}"))["status"] == "succeeded"
    return root


@pytest.fixture(scope="module")
def docs_root(spark, tmp_path_factory) -> Path:
    """BASE_DOCS and BASE_QUESTIONS as Delta tables, nothing ingested (for scenarios that fail early)."""
    root = tmp_path_factory.mktemp("reliability-docs")
    cfg = make_cfg(root)
    write_docs(spark, cfg, BASE_DOCS)
    write_questions(spark, cfg, BASE_QUESTIONS)
    return root


# -- concurrency -------------------------------------------------------------------------
def test_two_ingests_at_once_never_duplicate_chunks(spark, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    cfg = make_cfg(root)
    for round_, docs in enumerate([BASE_DOCS, BASE_DOCS + MORE_DOCS]):  # fresh tables, then new documents
        write_docs(spark, cfg, docs)
        results = run_jobs_together("ingest", root)
        rows, ids, doc_ids = chunk_counts(spark, cfg)
        assert rows == ids, f"round {round_}: {rows} chunk rows for {ids} chunk ids"
        assert doc_ids == {d["doc_id"] for d in docs}
        assert sorted(chroma_ids(cfg)) == sorted(r["chunk_id"] for r in rows_of(spark, cfg, cfg.names.chunks))
        assert_succeeded_or_refused(results)
    ingests = [r for r in rows_of(spark, cfg, cfg.names.runs) if r["job"] == "ingest"]
    assert sum(r["counts"].get("chunks_embedded", 0) for r in ingests) == ids  # no chunk embedded twice


def test_two_answer_runs_with_one_run_id_never_duplicate_answers(spark, base, tmp_path):
    root = clone(base, tmp_path / "root")
    cfg = make_cfg(root)
    results = run_jobs_together("answer", root, "--run-id", "answer-twice")
    answers = [r for r in rows_of(spark, cfg, cfg.names.answers) if r["run_id"] == "answer-twice"]
    assert sorted(a["question_id"] for a in answers) == sorted(q["question_id"] for q in BASE_QUESTIONS)
    assert all(a["error"] is None for a in answers)
    assert_succeeded_or_refused(results)


def test_a_held_lock_refuses_at_once_and_a_dead_holders_lock_expires(spark, base, tmp_path):
    from sparkrag.errors import LockError
    from sparkrag.pipelines.ingest import run_ingest
    from sparkrag.pipelines.preflight import lock_path

    root = clone(base, tmp_path / "root")
    cfg = make_cfg(root, "tables.lock_wait_seconds=0", "tables.lock_stale_seconds=3")
    write_docs(spark, cfg, BASE_DOCS + MORE_DOCS[:1])
    before = chunk_counts(spark, cfg)
    path = lock_path(tables_of(spark, cfg), cfg, "ingest", "x")
    holder = subprocess.Popen(  # another live ingest: a process holding the lock, beating
        [sys.executable, "-c", "import os, sys, time; from sparkrag.pipelines.locks import acquire_lock; "
         "acquire_lock(os.path.dirname(sys.argv[1]), os.path.basename(sys.argv[1])[:-5], owner='ingest-holder', "
         "wait_seconds=0, stale_seconds=3); print('held', flush=True); time.sleep(600)", path],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(LockError) as refused:
            run_ingest(spark, cfg)
        message = str(refused.value)
        assert "ingest-holder" in message and path in message and "\n" not in message
        assert time.monotonic() - start < 30
        assert chunk_counts(spark, cfg) == before  # refused before any work
        time.sleep(4)  # still beating: still held, however old the lock file
        with pytest.raises(LockError):
            run_ingest(spark, cfg)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing: after lock_stale_seconds its lock is taken over.
    record = run_ingest(spark, make_cfg(root, "tables.lock_wait_seconds=30", "tables.lock_stale_seconds=3"))
    assert record["status"] == "succeeded" and record["counts"]["documents_new"] == 1
    rows, ids, doc_ids = chunk_counts(spark, cfg)
    assert rows == ids and MORE_DOCS[0]["doc_id"] in doc_ids
    assert not os.path.exists(path)  # released at the end


def test_a_rerun_heals_repeated_chunks_and_answers(spark, base, tmp_path):
    from pyspark.sql import functions as F

    from sparkrag.pipelines.answer import run_answer
    from sparkrag.pipelines.ingest import run_ingest

    root = clone(base, tmp_path / "root")
    cfg = make_cfg(root)
    tables = tables_of(spark, cfg)
    twice = [BASE_DOCS[0]["doc_id"], BASE_DOCS[2]["doc_id"]]
    # What two unlocked overlapping runs left behind: some chunks and answers twice.
    tables.write(tables.read(cfg.names.chunks).where(F.col("doc_id").isin(twice)), cfg.names.chunks, mode="append")
    dup_q = [q["question_id"] for q in BASE_QUESTIONS[:2]]
    tables.write(tables.read(cfg.names.answers).where(F.col("question_id").isin(dup_q)), cfg.names.answers,
                 mode="append")
    rows, ids, _ = chunk_counts(spark, cfg)
    assert rows > ids
    record = run_ingest(spark, cfg)
    assert record["status"] == "succeeded"
    rows, ids, doc_ids = chunk_counts(spark, cfg)
    assert rows == ids and doc_ids == {d["doc_id"] for d in BASE_DOCS}
    assert sorted(chroma_ids(cfg)) == sorted(r["chunk_id"] for r in rows_of(spark, cfg, cfg.names.chunks))
    assert record["counts"]["documents_new"] == 2  # the two repeated documents, embedded once more
    answered = run_answer(spark, make_cfg(root, f"answer.run_id={BASE_RUN}", "answer.resume=true"))
    assert answered["counts"]["questions"] == 2  # only the healed ones are answered again
    keys = [(a["question_id"], a["run_id"]) for a in rows_of(spark, cfg, cfg.names.answers)]
    assert len(keys) == len(set(keys)) == len(BASE_QUESTIONS)


# -- hostile inputs ----------------------------------------------------------------------
def test_null_empty_and_repeated_question_ids_are_rejected_the_rest_answered(spark, base, tmp_path):
    from sparkrag.pipelines.answer import run_answer

    root = clone(base, tmp_path / "root")
    cfg = make_cfg(root, "answer.run_id=answer-ids")
    good = BASE_QUESTIONS[:3]
    bad = [{"question_id": None, "question": "Who is Beyonce?"}, {"question_id": " \t", "question": "What is an iPod?"},
           {"question_id": "dup", "question": "When was Chopin born?"},
           {"question_id": "dup", "question": "Where did Chopin live?"}]
    write_questions(spark, cfg, good + bad)
    record = run_answer(spark, cfg)
    assert record["status"] == "succeeded"
    answers = [a for a in rows_of(spark, cfg, cfg.names.answers) if a["run_id"] == "answer-ids"]
    assert sorted(a["question_id"] for a in answers) == sorted(q["question_id"] for q in good)
    rejects = [r for r in rows_of(spark, cfg, cfg.names.rejects) if r["run_id"] == "answer-ids"]
    def key(t: tuple) -> tuple:  # a null row_key sorts first
        return tuple("" if v is None else v for v in t)

    got = sorted(((r["row_key"], r["column"], r["reason"]) for r in rejects), key=key)
    assert got == sorted([(None, "question_id", "null question id"), (" \t", "question_id", "empty question id"),
                          ("dup", "question_id", "duplicate question id (2 rows)"),
                          ("dup", "question_id", "duplicate question id (2 rows)")], key=key)
    assert {json.loads(r["row_json"])["question"] for r in rejects} == {q["question"] for q in bad}


def test_text_that_is_not_utf8_is_a_reject_naming_row_and_column(spark, docs_root, tmp_path):
    from pyspark.sql import functions as F

    from sparkrag.pipelines.ingest import run_ingest

    root = clone(docs_root, tmp_path / "root")
    cfg = make_cfg(root)
    tables = tables_of(spark, cfg)
    # A string column holding bytes that are not UTF-8 ("H\xc3(\xff..."): a binary cast to string,
    # which Spark and both Delta writers store as is.
    broken = spark.range(1).select(
        F.lit("broken#0").alias("doc_id"), F.lit("Broken").alias("title"),
        F.concat(F.unhex(F.lit("48C328FF")).cast("string"), F.lit(" and then some ordinary text.")).alias("text"),
        F.lit("web").alias("source"), F.lit("en").alias("lang"))
    good = BASE_DOCS[:2]
    docs = spark.createDataFrame(good, "doc_id string, title string, text string, source string, lang string")
    tables.write(docs.unionByName(broken), cfg.names.documents, mode="overwrite")
    record = run_ingest(spark, cfg)
    assert record["status"] == "succeeded" and record["counts"]["rejects"] == 1
    assert record["counts"]["documents_new"] == len(good)
    _, _, doc_ids = chunk_counts(spark, cfg)
    assert doc_ids == {d["doc_id"] for d in good}
    [reject] = [r for r in rows_of(spark, cfg, cfg.names.rejects) if r["run_id"] == record["run_id"]]
    assert (reject["row_key"], reject["column"]) == ("broken#0", "text")
    assert "UTF-8" in reject["reason"]
    assert "ordinary text" in json.loads(reject["row_json"])["text"]


@pytest.mark.parametrize("option", ["tables.root", "chroma.path", "lexical.path"])
def test_an_unwritable_output_fails_before_planning_with_one_line(spark, docs_root, tmp_path, option):
    from sparkrag.errors import OutputError
    from sparkrag.jobs import ingest as ingest_job

    root = clone(docs_root, tmp_path / "root")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")  # root ignores permissions; a file as parent does not
    target = blocker / "out"
    args = ["--config", str(config_file(root)), "--set", f"{option}={target}", "--log-level", "WARNING"]
    if option != "tables.root":  # the documents stay readable where they are
        args += ["--set", f"tables.root={root / 'tables'}"]
    start = time.monotonic()
    with pytest.raises(OutputError) as failed:
        ingest_job.run(args, spark)
    assert time.monotonic() - start < 20
    message = str(failed.value)
    assert option in message and str(target) in message and "\n" not in message
    with pytest.raises(SystemExit) as exited:  # the console script / spark-submit: one line, status 1
        ingest_job.main(args, spark)
    assert str(exited.value).startswith("error: OutputError:") and str(target) in str(exited.value)


# -- exposure ----------------------------------------------------------------------------
_LISTENING = r"""
import json, os, sys
from sparkrag.config import SparkConfig
from sparkrag.spark import get_spark
spark = get_spark(SparkConfig(master="local[1]"))
spark.range(10).count()
pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
inodes = set()
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if link.startswith("socket:["):
        inodes.add(link[8:-1])
bound = []
for table in ("tcp", "tcp6"):
    for line in open(f"/proc/net/{table}").read().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
            bound.append(parts[1])
print(json.dumps({"bound": bound, "ui": spark.sparkContext.uiWebUrl}))
"""


def _address(hex_address: str) -> str:
    import ipaddress

    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return f"{ipaddress.IPv4Address(raw[::-1])}:{int(port, 16)}"
    v6 = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return f"[{f'::ffff:{v6.ipv4_mapped}' if v6.ipv4_mapped else v6}]:{int(port, 16)}"


def test_a_local_session_listens_on_loopback_only():
    env = {k: v for k, v in job_env().items() if k not in ("SPARK_LOCAL_IP", "PYSPARK_GATEWAY_PORT")}
    out = subprocess.run([sys.executable, "-c", _LISTENING], capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    bound = [_address(a) for a in seen["bound"]]
    assert len(bound) >= 2, bound  # at least the driver RPC and the block manager (and the UI)
    loopback = ("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")
    assert all(a.startswith(loopback) for a in bound), bound
    assert seen["ui"] is None or "127.0.0.1" in seen["ui"]


def test_secrets_are_redacted_in_logs_run_records_and_errors(spark, docs_root, tmp_path, caplog):
    from sparkrag.errors import ConfigError, TableError
    from sparkrag.jobs import _common
    from sparkrag.jobs import ingest as ingest_job

    root = clone(docs_root, tmp_path / "root")
    conf = (f"spark.conf={{spark.hadoop.fs.s3a.secret.key: {SECRET}, "
            f"fs.azure.account.key.acct.dfs.core.windows.net: {AZURE_SECRET}, spark.driver.memory: 1g}}")
    # The documents table is missing: the run fails and records its config and error.
    args = ["--config", str(config_file(root)), "--set", conf, "--set", "names.documents=rag.missing"]
    with caplog.at_level(logging.INFO, logger="sparkrag"):
        with pytest.raises(SystemExit):
            ingest_job.main(args, spark)
    logged = caplog.text
    assert "config:" in logged and "redacted" in logged
    assert SECRET not in logged and AZURE_SECRET not in logged
    cfg = make_cfg(root)
    [failed] = [r for r in rows_of(spark, cfg, cfg.names.runs) if r["job"] == "ingest" and r["status"] == "failed"]
    assert SECRET not in failed["config_json"] and AZURE_SECRET not in failed["config_json"]
    stored = json.loads(failed["config_json"])["spark"]["conf"]
    assert stored["spark.hadoop.fs.s3a.secret.key"] == "*********(redacted)"
    assert stored["fs.azure.account.key.acct.dfs.core.windows.net"] == "*********(redacted)"
    assert stored["spark.driver.memory"] == "1g"  # ordinary settings stay readable

    # An error quoting a secret (as a Hadoop client's message may): a stand-in job raises it,
    # since the scenario is about what the job layer prints and stores, not about S3.
    def leaky_job(spark_, cfg_):
        from sparkrag.pipelines.runs import RunRecorder

        error = f"cannot list s3a://bucket: key {SECRET} refused"
        assert SECRET not in RunRecorder("ingest", cfg_, "r1").record("failed", error)["error"]
        raise TableError(error)

    main = _common.entry_point(lambda argv, spark_: _common.run_rag_job(
        ingest_job.build_parser(), {}, leaky_job, argv, spark_, ()))
    with pytest.raises(SystemExit) as exited:
        main(args, spark)
    assert "cannot list s3a://bucket" in str(exited.value) and SECRET not in str(exited.value)
    assert "redacted" in str(exited.value)
    with pytest.raises(ConfigError) as misplaced:  # a misplaced secret is named, not quoted
        load_config(RagConfig, None, ["spark.app_name=rag", f"spark.app_name.token={SECRET}"])
    assert "spark.app_name.token" in str(misplaced.value) and SECRET not in str(misplaced.value)
    with pytest.raises(ConfigError) as mistyped:
        load_config(RagConfig, None, [f"chroma.host=[{SECRET}]", "chroma.mode=server"])
    assert "chroma.host" in str(mistyped.value) and SECRET in str(mistyped.value)  # not a secret key: quoted
