"""A real ``chroma run`` server for the session: import the fixture into a test module.

    from chroma_server import chroma_server  # noqa: F401
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class ChromaServer:
    host: str
    port: int
    path: str
    log: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chroma_command() -> list[str]:
    exe = Path(sys.executable).with_name("chroma")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; app()"]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory) -> ChromaServer:
    root = tmp_path_factory.mktemp("chroma-server")
    host, port = "127.0.0.1", free_port()
    log_path = root / "server.log"
    # The server logs every request at INFO (31 MB per 10k requests): warnings only.
    env = dict(os.environ, RUST_LOG="warn", ANONYMIZED_TELEMETRY="False")
    cmd = _chroma_command() + ["run", "--host", host, "--port", str(port), "--path", str(root / "data")]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/api/v2/heartbeat", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chroma server did not start (rc={proc.poll()}):\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield ChromaServer(host=host, port=port, path=str(root / "data"), log=str(log_path))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
