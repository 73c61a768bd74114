"""Local processes for the demo and the tests: a private redis-server and faceq workers.

Real components, started and stopped cleanly: a ``redis-server`` on a free loopback port
that persists nothing, and ``python -m workers`` subprocesses that are ready when they
answer a Celery ping (which happens only after the model is loaded and warm).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1 and a free port; nothing written to disk."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port)

        def answers() -> bool:
            try:
                return client.ping()
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}") from None
                return False

        wait_until(answers, 20, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class WorkerProcess:
    """``python -m workers`` in a subprocess with its own environment and log file."""

    def __init__(self, env: dict[str, str], log_path: Path, device: str = "cpu", concurrency: int = 1,
                 hostname: str | None = None):
        self.env = env
        self.log_path = log_path
        self.hostname = hostname or f"faceq-{device.replace(':', '')}-{os.getpid()}-{free_port()}@localhost"
        self.args = [sys.executable, "-m", "workers", "--device", device, "--concurrency", str(concurrency),
                     "--hostname", self.hostname]
        self.process: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 120) -> "WorkerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=Path(__file__).resolve().parent.parent)
        wait_until(self._ready, ready_timeout, f"worker {self.hostname} to answer a ping", interval=0.5)
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}; see {self.log_path}:\n{self.log_tail()}")
        return self.hostname in self.ping(timeout=0.5)

    def ping(self, timeout: float = 1.0) -> list[str]:
        from celery import Celery

        probe = Celery(broker=self.env["FACEQ_BROKER_URL"])
        probe.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
        try:
            return [name for reply in probe.control.ping(timeout=timeout) or [] for name in reply]
        finally:
            probe.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)  # Celery warm shutdown: finish, then exit
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
