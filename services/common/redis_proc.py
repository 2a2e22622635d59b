"""A private ``redis-server`` on a free loopback port, nothing persisted.

Used by ``seedctl up`` (unless ``REDIS_URL`` is set), the test fixtures and the benchmarks, so every
one of them gets an isolated Redis that works on any machine with ``redis-server`` installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A loopback port that was free a moment ago (for processes that cannot bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(port: int, timeout_s: float = 0.5) -> bool:
    """True when a Redis on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """A private ``redis-server`` on a free port; ``start``/``stop`` may be repeated (same port)."""

    def __init__(self, workdir: Path, *, log_path: Path | None = None, new_session: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.workdir = Path(workdir)
        self.log_path = log_path or self.workdir / "redis.log"
        self.new_session = new_session
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        if self.proc is None:
            raise RuntimeError("redis-server is not running")
        return self.proc.pid

    def start(self, timeout_s: float = 10.0) -> None:
        """Start and wait until it answers PING; RuntimeError naming the log otherwise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.log_path.resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=self.new_session)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if redis_answers(self.port, timeout_s=0.2):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        """Terminate and wait (no-op when not running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
