"""Checks a job makes before any work: its outputs are writable, and it holds its run lock.

Issue #17: an unwritable ``tables.root`` failed only after planning and embedding, inside a
476-line trace; two overlapping runs duplicated rows. :func:`check_outputs` probes every
local output folder (a file written and removed in it, or in its nearest existing parent) and raises one
:class:`~sparkrag.errors.OutputError` naming the path and the option; :func:`job_lock`
takes the job's lock (:mod:`sparkrag.pipelines.locks`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import TYPE_CHECKING

from sparkrag.config import RagConfig
from sparkrag.errors import OutputError
from sparkrag.pipelines.locks import RunLock, acquire_lock, lock_name

if TYPE_CHECKING:
    from sparkrag.delta import Tables

__all__ = ["check_outputs", "check_writable", "job_lock", "lock_path", "output_folders"]

log = logging.getLogger(__name__)


class _NoLock:
    """Stands in for a RunLock where no lock can be taken (a Hadoop URI lock folder)."""

    def check(self) -> None:
        """Nothing to lose."""

    def release(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> "_NoLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _is_uri(path: str) -> bool:
    # Hadoop URIs (abfss://, s3a://, dbfs:/) are written through Spark; a probe here proves nothing.
    return "://" in path or path.startswith("dbfs:")


def check_writable(path: str, option: str) -> None:
    """Raise OutputError unless ``path`` is a folder this process can write, or could create.

    Nothing is left behind: a missing folder is not created, its nearest existing parent is
    probed instead (a job that fails its checks leaves no trace).

    Args:
        path: a local folder; Hadoop URIs are skipped.
        option: the config option that set it, named in the error.
    """
    if not path or _is_uri(path):
        return
    full = os.path.abspath(path)
    probe_dir = full
    while not os.path.isdir(probe_dir) and os.path.dirname(probe_dir) != probe_dir:
        if os.path.exists(probe_dir):  # a file where a folder should be
            raise OutputError(f"{option}: {full} is not a folder ({probe_dir} is a file); give a folder "
                              f"with --set {option}=<path>")
        probe_dir = os.path.dirname(probe_dir)
    try:
        fd, probe = tempfile.mkstemp(prefix=".sparkrag-write-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"{option}: cannot write to {full} ({reason}); give a writable folder "
                          f"with --set {option}=<path>") from None


def output_folders(tables: "Tables", cfg: RagConfig, job: str) -> list[tuple[str, str]]:
    """``(folder, option)`` pairs ``job`` ("ingest" or "answer") writes on this machine."""
    names = cfg.names
    written = ["chunks", "rejects", "runs"] if job == "ingest" else ["answers", "rejects", "runs"]
    out: list[tuple[str, str]] = []
    if any(tables.is_name(getattr(names, n)) and not tables.is_catalog_table(getattr(names, n)) for n in written):
        out.append((cfg.tables.root, "tables.root"))
    for name in written:
        table = getattr(names, name)
        if not tables.is_name(table):
            out.append((os.path.dirname(os.path.abspath(table)) or ".", f"names.{name}"))
    if job == "ingest" and cfg.chroma.mode == "embedded":
        out.append((cfg.chroma.path, "chroma.path"))
    if job == "ingest" and cfg.lexical.enabled and cfg.lexical.path:
        out.append((cfg.lexical.path, "lexical.path"))
    return out


def check_outputs(tables: "Tables", cfg: RagConfig, job: str) -> None:
    """Fail before planning when an output ``job`` writes cannot be written (first one found)."""
    seen: set[str] = set()
    for folder, option in output_folders(tables, cfg, job):
        if folder not in seen:
            seen.add(folder)
            check_writable(folder, option)


def _lock_folder(cfg: RagConfig) -> tuple[str, str]:
    t = cfg.tables
    if t.lock_dir:
        return t.lock_dir, "tables.lock_dir"
    return os.path.join(t.root, "_sparkrag_locks"), "tables.root"


def lock_path(tables: "Tables", cfg: RagConfig, job: str, run_id: str) -> str:
    """The lock file ``job`` takes: ingest per chunks table and index, answer per answers table and run id."""
    if job == "ingest":
        c = cfg.chroma
        index = f"{c.mode}:{os.path.abspath(c.path) if c.mode == 'embedded' else f'{c.host}:{c.port}'}/{c.collection}"
        targets = [tables.location(cfg.names.chunks), index]
    else:
        targets = [tables.location(cfg.names.answers), run_id]
    return os.path.join(_lock_folder(cfg)[0], f"{lock_name(job, *targets)}.lock")


def job_lock(tables: "Tables", cfg: RagConfig, job: str, run_id: str) -> "RunLock | _NoLock":
    """Take ``job``'s lock (:func:`lock_path`) before planning; release it when the run ends.

    Raises:
        LockError: another live run holds it for longer than ``tables.lock_wait_seconds``.
    """
    folder, option = _lock_folder(cfg)
    if _is_uri(folder):
        log.warning("%s=%s is a Hadoop URI: runs are not locked; give a mounted path (/dbfs/..., /Volumes/...) "
                    "to serialise overlapping runs", option, folder)
        return _NoLock()
    check_writable(folder, option)
    name = os.path.basename(lock_path(tables, cfg, job, run_id))[: -len(".lock")]
    return acquire_lock(folder, name, owner=run_id, wait_seconds=cfg.tables.lock_wait_seconds,
                        stale_seconds=cfg.tables.lock_stale_seconds, option=option)
