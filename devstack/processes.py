"""Local processes for the demo and the tests: a private redis-server, faceq workers, and a
loopback TCP proxy that can cut a connection path on demand.

Real components, started and stopped cleanly: a ``redis-server`` on a free loopback port
(persisting nothing unless asked to keep an append-only file), ``python -m faceq.workers``
subprocesses that are ready when they answer a Celery ping (which happens only after the
model is loaded and warm), and ``TcpProxy``, which the chaos tests put in front of a service
(S3) to simulate an outage: ``cut()`` resets every connection and refuses new ones,
``restore()`` lets them through again.
"""

from __future__ import annotations

import collections
import os
import queue
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

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


def process_tree(pid: int) -> dict[int, tuple[int, int, str]]:
    """``pid`` and its live descendants (Linux /proc): PID → (parent PID, CPU clock ticks, command line).
    A worker's tree holds its fork server and the crop pool's decoding children."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        table[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), command)
    tree, grew = {pid}, True
    while grew:
        grew = False
        for child, (parent, _, _) in table.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return {p: table[p] for p in tree if p in table}


def decoding_children(worker_pid: int) -> list[int]:
    """The PIDs of a worker's crop-pool children (those its fork server forked)."""
    tree = process_tree(worker_pid)
    servers = {p for p, (_, _, command) in tree.items() if "forkserver" in command and tree[p][0] == worker_pid}
    return sorted(p for p, (parent, _, _) in tree.items() if parent in servers)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1 and a free port.

    By default nothing is written to disk: a restart loses every key. With ``appendonly``
    every write is appended to an AOF in ``workdir`` and fsynced before it is acknowledged
    (``--appendfsync always``), so ``stop(kill=True)`` followed by ``restart()`` (same port,
    same data directory) loses nothing. With ``password`` the server requires it
    (``--requirepass``) and ``url`` carries it.
    """

    def __init__(self, workdir: Path, appendonly: bool = False, password: str | None = None):
        self.workdir = Path(workdir)
        self.appendonly = appendonly
        self.password = password
        self.port = free_port()
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.log_path = self.workdir / "redis.log"
        self.process: subprocess.Popen | None = None

    def _args(self, binary: str) -> list[str]:
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--dir", str(self.workdir),
                "--logfile", str(self.log_path)]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def client(self, **kwargs) -> redis.Redis:
        """A client of this server (password included); ``kwargs`` go to ``Redis.from_url``."""
        return redis.Redis.from_url(self.url, **kwargs)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20) -> "RedisServer":
        """Start the server and return once it answers (after loading its AOF, if any)."""
        if self.running:
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self._args(binary), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = self.client(socket_connect_timeout=1, socket_timeout=1)

        def answers() -> bool:
            try:
                return client.ping()
            except redis.ConnectionError:  # refused, or LOADING (BusyLoadingError) while the AOF is read
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited with {self.process.returncode}:\n"
                        f"{_tail(self.log_path, 10)}"
                    ) from None
                return False

        try:
            wait_until(answers, timeout, f"redis-server on port {self.port}", interval=0.05)
        finally:
            client.close()
        return self

    def stop(self, kill: bool = False, timeout: float = 10) -> None:
        """Stop the server: SIGTERM (a clean shutdown) or, with ``kill``, SIGKILL (a crash:
        with ``appendonly`` only what was acknowledged survives, which is everything)."""
        if self.running:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def restart(self, timeout: float = 20) -> "RedisServer":
        """Start again on the same port with the same data directory (stopping it first if it
        is still running); the AOF, when there is one, is loaded back."""
        self.stop()
        return self.start(timeout)

    @contextmanager
    def outage(self, kill: bool = True) -> Iterator["RedisServer"]:
        """``with server.outage(): ...``: down (SIGKILL by default) inside the block, restarted after."""
        self.stop(kill=kill)
        try:
            yield self
        finally:
            self.restart()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class WorkerProcess:
    """``python -m faceq.workers`` in a subprocess with its own environment and log file."""

    def __init__(self, env: dict[str, str], log_path: Path, device: str = "cpu", concurrency: int = 1,
                 hostname: str | None = None):
        self.env = env
        self.log_path = log_path
        self.hostname = hostname or f"faceq-{device.replace(':', '')}-{os.getpid()}-{free_port()}@localhost"
        self.args = [sys.executable, "-m", "faceq.workers", "--device", device, "--concurrency", str(concurrency),
                     "--hostname", self.hostname]
        self.process: subprocess.Popen | None = None
        self._log = None

    def launch(self) -> "WorkerProcess":
        """Start the process without waiting for it to be ready (see ``wait_ready``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=Path(__file__).resolve().parent.parent)
        return self

    def wait_ready(self, timeout: float = 120) -> "WorkerProcess":
        wait_until(self._ready, timeout, f"worker {self.hostname} to answer a ping", interval=0.5)
        return self

    def start(self, ready_timeout: float = 120) -> "WorkerProcess":
        return self.launch().wait_ready(ready_timeout)

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

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_bytes(self) -> int | None:
        """Resident memory of the worker process (Linux ``/proc``), or None once it is gone."""
        if not self.alive():
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def _close_log(self) -> None:
        if self._log:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)  # Celery warm shutdown: finish, then exit
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close_log()

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL, as the OOM killer or a preempted node does: no warm shutdown, no requeue."""
        if self.alive():
            self.process.kill()
            self.process.wait(timeout)
        self._close_log()

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), not a graceful FIN: the peer fails at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Link:
    """One proxied connection: the accepted client socket and its upstream socket."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        # data waiting to be sent TO each socket, as (not before monotonic time, bytes)
        self.outbox: dict[socket.socket, collections.deque] = {client: collections.deque(),
                                                               upstream: collections.deque()}
        self.read_eof = {client: False, upstream: False}
        self.write_shut = {client: False, upstream: False}

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    def queued(self, sock: socket.socket) -> int:
        return sum(len(data) for _, data in self.outbox[sock])

    @property
    def finished(self) -> bool:
        return all(self.read_eof.values()) and all(self.write_shut.values())


class TcpProxy:
    """A loopback TCP proxy to ``target_host:target_port`` on a free port, for fault injection.

    ``cut()`` resets every open connection and refuses new ones (the port stays reserved, so
    clients get "connection refused" at once), ``restore()`` accepts again on the same port.
    ``latency`` delays every forwarded piece of data by that many seconds (a slow network).
    One selector thread does all the work; stdlib only.
    """

    BUFFER_LIMIT = 1 << 20  # stop reading a side while more than this waits for its peer

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1", latency: float = 0.0,
                 connect_timeout: float = 2.0):
        self.target = (target_host, target_port)
        self.host = host
        self.latency = latency
        self.connect_timeout = connect_timeout
        self.connections_total = 0  # accepted since start
        self._listener: socket.socket | None = self._bind()
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._reserved: socket.socket | None = None  # bound, not listening, while cut
        self._links: list[_Link] = []
        self._commands: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._masks: dict[socket.socket, int] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"TcpProxy:{self.port}", daemon=True)
        self._thread.start()

    @classmethod
    def to_url(cls, url: str, **kwargs) -> "TcpProxy":
        """A proxy in front of the host and port of ``url`` (``http://127.0.0.1:5000``)."""
        from urllib.parse import urlparse

        parsed = urlparse(url)
        return cls(parsed.hostname, parsed.port, **kwargs)

    def _bind(self, port: int = 0) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        return sock

    # -- public API (any thread) --------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    @property
    def active_connections(self) -> int:
        return len(self._links)

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until ``restore()``."""
        self._call("cut")

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self._call("restore")

    @contextmanager
    def outage(self) -> Iterator["TcpProxy"]:
        """``with proxy.outage(): ...``: cut inside the block, restored after."""
        self.cut()
        try:
            yield self
        finally:
            self.restore()

    def close(self) -> None:
        if not self._closed:
            self._call("close")
            self._thread.join(5)

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, command: str, timeout: float = 5.0) -> None:
        if self._closed:
            raise RuntimeError(f"proxy on port {self.port} is closed")
        done = threading.Event()
        errors: list[BaseException] = []
        self._commands.put((command, done, errors))
        self._wake_w.send(b"\0")
        if not done.wait(timeout):
            raise TimeoutError(f"proxy on port {self.port} did not {command} within {timeout}s")
        if errors:
            raise errors[0]

    # -- the selector thread ------------------------------------------------------------

    def _loop(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closed:
                timeout = self._update_interest()
                for key, events in self._selector.select(timeout):
                    sock = key.fileobj
                    if sock is self._wake_r:
                        self._run_commands()
                    elif sock is self._listener:
                        self._accept()
                    else:
                        link = key.data
                        if link not in self._links:
                            continue  # closed earlier in this round
                        if events & selectors.EVENT_WRITE:
                            self._send(link, sock)
                        if events & selectors.EVENT_READ and link in self._links:
                            self._receive(link, sock)
                for link in list(self._links):
                    self._half_close(link)
        finally:
            self._shutdown()

    def _set_mask(self, sock: socket.socket, mask: int, data=None) -> None:
        current = self._masks.get(sock, 0)
        if mask == current:
            return
        if not mask:
            self._selector.unregister(sock)
            del self._masks[sock]
        elif not current:
            self._selector.register(sock, mask, data)
            self._masks[sock] = mask
        else:
            self._selector.modify(sock, mask, data)
            self._masks[sock] = mask

    def _forget(self, sock: socket.socket) -> None:
        if sock in self._masks:
            self._selector.unregister(sock)
            del self._masks[sock]

    def _update_interest(self) -> float | None:
        now = time.monotonic()
        timeout: float | None = None
        if self._listener is not None:
            self._set_mask(self._listener, selectors.EVENT_READ)
        for link in self._links:
            for sock in (link.client, link.upstream):
                mask = 0
                if not link.read_eof[sock] and link.queued(link.peer(sock)) < self.BUFFER_LIMIT:
                    mask |= selectors.EVENT_READ
                outbox = link.outbox[sock]
                if outbox:
                    due = outbox[0][0]
                    if due <= now:
                        mask |= selectors.EVENT_WRITE
                    else:
                        timeout = due - now if timeout is None else min(timeout, due - now)
                self._set_mask(sock, mask, link)
        return timeout

    def _run_commands(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                command, done, errors = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                getattr(self, f"_do_{command}")()
            except BaseException as exc:  # reported to the caller
                errors.append(exc)
            done.set()

    def _do_cut(self) -> None:
        for link in list(self._links):
            self._drop(link, reset=True)
        if self._listener is not None:
            self._forget(self._listener)
            self._listener.close()  # pending connections in the backlog are reset
            self._listener = None
            # keep the port: bound but not listening, so connecting is refused, and no one
            # else can take it before restore()
            self._reserved = self._bind(self.port)

    def _do_restore(self) -> None:
        if self._listener is None:
            sock, self._reserved = self._reserved or self._bind(self.port), None
            sock.listen(128)
            self._listener = sock

    def _do_close(self) -> None:
        self._closed = True

    def _shutdown(self) -> None:
        for link in list(self._links):
            self._drop(link, reset=True)
        for sock in (self._listener, self._reserved, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._listener = self._reserved = None
        self._selector.close()
        self._closed = True

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self.connections_total += 1
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            _reset(client)  # the target is down: so is the proxy, for this client
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._links.append(_Link(client, upstream))

    def _receive(self, link: _Link, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(link, reset=True)
            return
        if data:
            link.outbox[link.peer(sock)].append((time.monotonic() + self.latency, data))
        else:
            link.read_eof[sock] = True

    def _send(self, link: _Link, sock: socket.socket) -> None:
        outbox = link.outbox[sock]
        while outbox and outbox[0][0] <= time.monotonic():
            due, data = outbox[0]
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(link, reset=True)
                return
            if sent < len(data):
                outbox[0] = (due, data[sent:])
                return
            outbox.popleft()

    def _half_close(self, link: _Link) -> None:
        """Pass an EOF on once everything read before it has been delivered."""
        for sock in (link.client, link.upstream):
            if link.read_eof[link.peer(sock)] and not link.outbox[sock] and not link.write_shut[sock]:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                link.write_shut[sock] = True
        if link.finished:
            self._drop(link, reset=False)

    def _drop(self, link: _Link, reset: bool) -> None:
        if link in self._links:
            self._links.remove(link)
        for sock in (link.client, link.upstream):
            self._forget(sock)
            if reset:
                _reset(sock)
            else:
                sock.close()
