"""Run locks: one ingest per chunks table and index, one answer run per run id, at a time.

Two ingests against the same tables each plan from the same snapshot, embed the same
chunks and both append them (issue #17: 79 rows for 66 chunk ids); two answer runs with
one run id both insert the same ``(question_id, run_id)`` rows. Delta's optimistic
concurrency does not catch either: appends never conflict, and delta-rs's merge does not
see rows inserted by a concurrent merge. So each job takes a lock before it plans.

The lock is a file on a path every driver sees (``tables.lock_dir``, default
``<tables.root>/_sparkrag_locks``), created with ``O_CREAT | O_EXCL`` (atomic on local
disks, NFS v3+, DBFS/Volumes FUSE mounts). Its holder touches it every
``stale_seconds / 4`` from a daemon thread (the heartbeat). A lock whose heartbeat is older
than ``stale_seconds``, or whose holder was a process of this host that no longer exists
(kill -9), belongs to a dead run and is taken over: the taker first creates
``<name>.steal`` exclusively, re-checks the heartbeat under it and renames the stale file
away, so two takers cannot both win and a live holder is never robbed. A holder that finds
its lock gone or rewritten (it stalled longer than ``stale_seconds``) fails at its next
:meth:`RunLock.check` instead of committing.

Example:
    >>> with acquire_lock("/data/locks", "ingest-chunks", owner="ingest-2026...",
    ...                   wait_seconds=600, stale_seconds=120) as lock:   # doctest: +SKIP
    ...     lock.check()  # before each commit
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from sparkrag.errors import LockError

__all__ = ["RunLock", "acquire_lock", "lock_name", "read_lock"]

log = logging.getLogger(__name__)


def lock_name(job: str, *targets: str) -> str:
    """A file-safe lock name for ``job`` on ``targets`` (table locations, index paths, run ids)."""
    digest = hashlib.sha256("\u0001".join(targets).encode()).hexdigest()[:16]
    return f"{job}-{digest}"


def read_lock(path: str) -> dict[str, Any] | None:
    """The holder record of the lock file at ``path`` plus ``heartbeat_age`` seconds; None if free."""
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-written by a holder killed while creating it
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        info = {}
    return {**info, "heartbeat_age": round(age, 1)}


class RunLock:
    """A held lock with its heartbeat thread; use :func:`acquire_lock` to get one."""

    def __init__(self, path: str, token: str, stale_seconds: float) -> None:
        self.path, self.token, self.stale_seconds = path, token, stale_seconds
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat:{os.path.basename(path)}",
                                        daemon=True)
        self._thread.start()

    def _owned(self) -> bool:
        info = read_lock(self.path)
        return info is not None and info.get("token") == self.token

    def _beat(self) -> None:
        every = max(self.stale_seconds / 4, 0.05)
        while not self._stop.wait(every):
            if not self._owned():
                self._lost = f"lock {self.path} was taken over (this process stalled > {self.stale_seconds:g} s)"
                log.error("%s", self._lost)
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                continue  # seen as lost on the next beat

    def check(self) -> None:
        """Raise LockError when the lock was lost; call before committing."""
        if self._lost or not self._owned():
            raise LockError(self._lost or f"lock {self.path} is no longer held by this run; nothing more is committed")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._owned():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire_lock(lock_dir: str, name: str, *, owner: str, wait_seconds: float, stale_seconds: float,
                 option: str = "tables.lock_dir", poll_seconds: float = 1.0) -> RunLock:
    """Take lock ``name`` under ``lock_dir``, waiting up to ``wait_seconds`` for its holder.

    Args:
        lock_dir: a folder every driver that may run the job sees.
        name: the lock's name (:func:`lock_name`).
        owner: the run id, recorded in the lock file and in errors.
        wait_seconds: how long to wait for a live holder; 0 fails at once.
        stale_seconds: a heartbeat older than this means the holder died.

    Returns:
        The held :class:`RunLock` (a context manager that releases it).

    Raises:
        LockError: a live holder kept the lock for ``wait_seconds``, or ``lock_dir`` is unusable.
    """
    try:
        os.makedirs(lock_dir, exist_ok=True)
    except OSError as exc:
        raise LockError(f"{option}: cannot create lock folder {lock_dir}: {exc.strerror or exc}") from None
    path = os.path.join(lock_dir, f"{name}.lock")
    token = uuid.uuid4().hex
    record = {"token": token, "owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
              "acquired_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        if _create_exclusive(path, json.dumps(record)):
            log.info("lock %s taken by %s", path, owner)
            return RunLock(path, token, stale_seconds)
        holder = read_lock(path)
        if holder is not None and _holder_gone(holder, stale_seconds):
            _take_over_stale(path, stale_seconds, holder)
            continue
        if holder is None:
            continue  # released between our create and our read
        if time.monotonic() >= deadline:
            raise LockError(f"{_describe(path, holder)}; gave up after {wait_seconds:g} s (tables.lock_wait_seconds). "
                            f"If that run died, its lock expires {stale_seconds:g} s after its last heartbeat "
                            "(tables.lock_stale_seconds)")
        if not announced:
            log.warning("%s; waiting up to %g s", _describe(path, holder), wait_seconds)
            announced = True
        time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0.01)))


def _describe(path: str, holder: dict[str, Any]) -> str:
    return (f"another run holds lock {path}: run {holder.get('owner', '?')} (host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}, since {holder.get('acquired_at', '?')}, "
            f"heartbeat {holder['heartbeat_age']:g} s ago)")


def _create_exclusive(path: str, content: str) -> bool:
    # Written to a private file first and hard-linked into place: link() is atomic and fails
    # when the name exists, so a reader never sees a half-written lock of a live holder.
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(content)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # file systems without hard links (some FUSE mounts): O_EXCL create
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        return True
    finally:
        os.unlink(tmp)


def _holder_gone(holder: dict[str, Any], stale_seconds: float) -> bool:
    """Its heartbeat stopped, or it was a process of this host that no longer exists (kill -9)."""
    if holder["heartbeat_age"] > stale_seconds:
        return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _take_over_stale(path: str, stale_seconds: float, holder: dict[str, Any]) -> None:
    """Remove a lock whose holder stopped beating, under a short-lived ``.steal`` guard."""
    guard = f"{path}.steal"
    guard_info = read_lock(guard)
    if guard_info is not None and guard_info["heartbeat_age"] > max(stale_seconds, 30.0):
        try:  # a taker died holding the guard
            os.unlink(guard)
        except FileNotFoundError:
            pass
    if not _create_exclusive(guard, json.dumps({"pid": os.getpid(), "host": socket.gethostname()})):
        time.sleep(0.05)  # another taker is at it
        return
    try:
        again = read_lock(path)  # re-checked under the guard: it may have been replaced meanwhile
        if again is not None and _holder_gone(again, stale_seconds) and again.get("token") == holder.get("token"):
            log.warning("taking over stale lock %s of run %s (host %s, pid %s, heartbeat %g s ago)",
                        path, again.get("owner"), again.get("host"), again.get("pid"), again["heartbeat_age"])
            try:
                os.rename(path, f"{path}.stale-{uuid.uuid4().hex[:8]}")
            except FileNotFoundError:
                pass
            else:
                _remove_old_stale_files(path)
    finally:
        os.unlink(guard)


def _remove_old_stale_files(path: str) -> None:
    folder, base = os.path.split(path)
    for entry in os.listdir(folder):
        if entry.startswith(f"{base}.stale-"):
            try:
                os.unlink(os.path.join(folder, entry))
            except FileNotFoundError:
                pass
