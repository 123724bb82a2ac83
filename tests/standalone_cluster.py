"""A real Spark standalone cluster on 127.0.0.1: one master, N workers, each worker "a node".

Each worker runs in its own mount namespace (``unshare -m``) with a private tmpfs over
/tmp and its own local and work directories, so a file the driver writes under its /tmp
is invisible to that worker's executors, as on separate machines; paths outside /tmp
(the venv, the project, the shared data folder) are seen by all, as DBFS, a Unity
Catalog volume or NFS would be. Everything binds to 127.0.0.1; the master's port is a
free one picked here, every other port is picked by the daemons (``0``).

    with StandaloneCluster(base_dir, workers=2) as cluster:
        subprocess.run(cluster.submit_command("jobs/ingest.py", "--config", ...), env=cluster.driver_env())

The cluster is stack-neutral: ``spark_home`` (whose ``bin/spark-class`` and
``bin/spark-submit`` are used), extra ``conf`` (``spark.jars`` for native Delta) and
extra ``env`` (``PYTHONPATH`` for a pyspark overlay) are parameters.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from chroma_server import free_port

__all__ = ["StandaloneCluster", "cluster_unavailable", "default_spark_home"]

HOST = "127.0.0.1"
_MASTER_UI = re.compile(r"MasterWebUI.*started at http://[^:/\s]+:(\d+)")


def default_spark_home() -> str:
    """The pip pyspark package's folder: it holds bin/spark-class and bin/spark-submit."""
    import pyspark

    return os.path.dirname(os.path.abspath(pyspark.__file__))


def cluster_unavailable(*paths: str) -> str | None:
    """Why a private-/tmp cluster cannot run here (None when it can).

    A tmpfs over /tmp would hide anything below it, so the interpreter, the project and
    the shared folder must all live elsewhere; ``unshare -m`` needs root (CAP_SYS_ADMIN).
    """
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no java on PATH"
    for path in (sys.prefix, os.path.realpath(sys.executable), *paths):
        real = os.path.realpath(path)
        if real == "/tmp" or real.startswith("/tmp/"):
            return f"{path} is under /tmp, which each worker replaces with a private tmpfs"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /tmp"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot give a process a private /tmp (unshare -m: {probe.stderr.strip()[:200]})"
    return None


@dataclass
class StandaloneCluster:
    """Start on ``__enter__``, stop everything it started on ``__exit__`` (also after a failure).

    Args:
        base_dir: a folder outside /tmp for logs and each worker's work dir.
        workers: how many workers ("nodes"), each with ``cores`` cores and ``memory``.
        spark_home: where ``bin/spark-class`` is (default: the pip pyspark package).
        conf: extra ``--conf`` for every job submitted (e.g. ``spark.jars``).
        env: extra environment for the daemons, executors and drivers (e.g. ``PYTHONPATH``).
        start_timeout_s: bound on the wait for the master and for every worker to register.
    """

    base_dir: Path
    workers: int = 2
    cores: int = 1
    memory: str = "2g"
    executor_memory: str = "1g"
    spark_home: str = field(default_factory=default_spark_home)
    conf: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 90.0
    master_url: str = ""
    ui_port: int = 0
    _procs: list[subprocess.Popen] = field(default_factory=list)

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> "StandaloneCluster":
        self.base_dir = Path(self.base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            # Master and workers start together (JVM start-up dominates on a busy machine):
            # the master's port is chosen here, and workers retry until it listens.
            self.master_url = f"spark://{HOST}:{free_port()}"
            self._start_master()
            for i in range(self.workers):
                self._start_worker(i)
            self.ui_port = int(self._wait_for(self.base_dir / "master.log", _MASTER_UI, "the master web UI").group(1))
            self._wait_for_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Path:
        log = self.base_dir / f"{name}.log"
        with open(log, "wb") as fh:
            # Its own session: stop() signals the daemon and every process it started.
            proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=dict(env),
                                    start_new_session=True, cwd=self.base_dir)
        self._procs.append(proc)
        return log

    def daemon_env(self) -> dict[str, str]:
        """The environment of the master and workers (executors inherit it)."""
        return {
            **os.environ,
            "SPARK_HOME": self.spark_home,
            "SPARK_LOCAL_IP": HOST,
            "SPARK_DAEMON_MEMORY": "256m",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_NO_DAEMONIZE": "1",
            # The master's REST submission server takes the fixed port 6066: off, so that
            # clusters of concurrent test runs do not collide.
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
            **self.env,
        }

    def _spark_class(self) -> str:
        return os.path.join(self.spark_home, "bin", "spark-class")

    def _start_master(self) -> None:
        port = self.master_url.rsplit(":", 1)[1]
        self._spawn("master", [self._spark_class(), "org.apache.spark.deploy.master.Master",
                               "--host", HOST, "--port", port, "--webui-port", "0"], self.daemon_env())

    def _start_worker(self, index: int) -> None:
        work = self.base_dir / f"worker{index}"
        work.mkdir(exist_ok=True)
        env = {**self.daemon_env(), "SPARK_LOCAL_DIRS": "/tmp/spark-local", "SPARK_WORKER_DIR": str(work / "work")}
        worker = [self._spark_class(), "org.apache.spark.deploy.worker.Worker", "--host", HOST,
                  "--port", "0", "--webui-port", "0", "--cores", str(self.cores), "--memory", self.memory,
                  "--work-dir", str(work / "work"), self.master_url]
        inner = "mount -t tmpfs tmpfs /tmp && mkdir -p /tmp/spark-local && exec " + " ".join(map(_quote, worker))
        self._spawn(f"worker{index}", ["unshare", "-m", "--propagation", "private", "sh", "-c", inner], env)

    def _wait_for(self, log: Path, pattern: re.Pattern, what: str) -> re.Match:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            found = pattern.search(log.read_text(errors="replace"))
            if found:
                return found
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"waiting for {what}: a daemon exited (rc={dead[0].returncode}); "
                                   f"{log.name}:\n{self._tail(log)}")
            time.sleep(0.3)
        raise RuntimeError(f"timed out after {self.start_timeout_s:.0f} s waiting for {what}; "
                           f"{log.name}:\n{self._tail(log)}")

    def status(self) -> dict:
        """The master's JSON status (``/json/``): workers, apps, cores."""
        with urllib.request.urlopen(f"http://{HOST}:{self.ui_port}/json/", timeout=5) as resp:
            return json.loads(resp.read())

    def alive_workers(self) -> list[dict]:
        return [w for w in self.status().get("workers", []) if w.get("state") == "ALIVE"]

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Spark daemon exited (rc={dead[0].returncode}):\n{self.logs()}")
            try:
                if len(self.alive_workers()) >= self.workers:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"only {len(self.alive_workers())} of {self.workers} workers registered within "
                           f"{self.start_timeout_s:.0f} s:\n{self.logs()}")

    def stop(self) -> None:
        """Terminate every process started here and its descendants (executors, Python workers)."""
        pids = [pid for p in self._procs for pid in _descendants(p.pid)]
        for proc in self._procs:
            _signal(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in [*pids, *(p.pid for p in self._procs)]:
            _signal(pid, signal.SIGKILL)
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()

    # -- jobs -------------------------------------------------------------------------
    def driver_env(self) -> dict[str, str]:
        """Environment for a driver (spark-submit) talking to this cluster from the host's namespace."""
        return {**self.daemon_env(), "PYSPARK_DRIVER_PYTHON": sys.executable}

    def submit_command(self, script: str, *args: str, conf: Mapping[str, str] | None = None) -> list[str]:
        """``spark-submit --master spark://...`` for ``script`` with loopback binding and small executors."""
        settings = {
            "spark.driver.host": HOST,
            "spark.driver.bindAddress": HOST,
            "spark.ui.enabled": "false",
            # All workers share the host name 127.0.0.1, so Spark would read another
            # executor's shuffle files straight from "its" disk: separate nodes do not.
            "spark.shuffle.readHostLocalDisk": "false",
            "spark.executor.memory": self.executor_memory,
            "spark.executor.cores": str(self.cores),
            "spark.cores.max": str(self.cores * self.workers),
            **self.conf,
            **(conf or {}),
        }
        command = [os.path.join(self.spark_home, "bin", "spark-submit"), "--master", self.master_url,
                   "--driver-memory", "1g"]
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        return [*command, script, *args]

    def logs(self, limit: int = 3000) -> str:
        """The tail of every daemon's log, and of each executor's stderr (for failure messages)."""
        parts = [f"--- {log.name}\n{self._tail(log, limit)}" for log in sorted(self.base_dir.glob("*.log"))]
        for err in sorted(self.base_dir.glob("worker*/work/app-*/*/stderr")):
            parts.append(f"--- {err.relative_to(self.base_dir)}\n{self._tail(err, limit)}")
        return "\n".join(parts)

    @staticmethod
    def _tail(path: Path, limit: int = 3000) -> str:
        try:
            return path.read_text(errors="replace")[-limit:]
        except OSError as exc:
            return f"<{exc}>"


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (read from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
