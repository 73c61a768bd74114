"""A small HTTP server whose threads and open connections stay bounded whatever clients do.

``http.server.ThreadingHTTPServer`` starts one thread per connection and waits for its
request without a deadline: 800 idle connections grew a worker to 658 threads. Here one
selector thread accepts connections and reads each request head without blocking. An idle
or slow client costs a file descriptor, never a thread: at most ``max_connections`` are
open (the oldest one still sending its head is dropped for a new one, so a health check gets
in during a flood), and each has ``head_timeout`` seconds to send its head. Only a complete
head reaches the fixed pool of ``threads`` handler threads, whose socket reads (a body) and
writes time out after ``io_timeout`` seconds. One request per connection (HTTP/1.0).

It runs the standard ``BaseHTTPRequestHandler`` subclasses unchanged, and offers the
``serve_forever`` / ``shutdown`` / ``server_close`` / ``server_address`` of ``HTTPServer``.
"""

from __future__ import annotations

import io
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_TOO_LARGE = (b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class _Prefixed(io.RawIOBase):
    """A socket's input with the bytes the selector already read put back in front."""

    def __init__(self, prefix: bytes, sock: socket.socket):
        self._prefix = memoryview(prefix)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._sock.recv_into(buffer)


class _Connection:
    """What a ``StreamRequestHandler`` sees as its request socket: reads start with the head."""

    def __init__(self, sock: socket.socket, head: bytes):
        self._sock = sock
        self._head = head

    def makefile(self, mode: str = "r", buffering: int = -1, **_):
        if "r" in mode:
            return io.BufferedReader(_Prefixed(self._head, self._sock))
        return self._sock.makefile(mode, buffering)

    def __getattr__(self, name: str):  # sendall, settimeout, setsockopt, getpeername, …
        return getattr(self._sock, name)


class BoundedHTTPServer:
    """Serves ``handler`` (a ``BaseHTTPRequestHandler`` subclass) on ``address`` (host, port)."""

    def __init__(self, address: tuple[str, int], handler, *, threads: int = 4, max_connections: int = 128,
                 head_timeout: float = 10.0, io_timeout: float = 10.0, name: str = "faceq-http"):
        self.RequestHandlerClass = handler
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.io_timeout = io_timeout
        self.socket = socket.create_server(address, backlog=64)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()[:2]
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._waiting: OrderedDict[socket.socket, list] = OrderedDict()  # socket → [head bytes, deadline]
        self._busy = 0  # connections handed to the pool and not closed yet
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._running = False

    # -- the selector loop ----------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._running = True
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                timeout = 1.0
                if self._waiting:
                    timeout = max(0.0, min(timeout, next(iter(self._waiting.values()))[1] - time.monotonic()))
                for key, _ in selector.select(timeout):
                    if key.data == "accept":
                        self._accept(selector)
                    elif key.data == "read":
                        self._read(selector, key.fileobj)
                self._expire(selector)
        finally:
            for sock in list(self._waiting):
                self._drop(selector, sock)
            selector.close()
            self._stopped.set()

    def _open(self) -> int:
        with self._lock:
            return len(self._waiting) + self._busy

    def _accept(self, selector) -> None:
        while True:
            try:
                sock, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, …: drop this round, keep serving
                log.warning("accept failed: %s", exc)
                return
            if self._open() >= self.max_connections:
                if self._waiting:  # the oldest client still sending its head makes room
                    self._drop(selector, next(iter(self._waiting)))
                else:  # every slot is being answered: refuse the newcomer
                    sock.close()
                    continue
            sock.setblocking(False)
            self._waiting[sock] = [b"", time.monotonic() + self.head_timeout]
            selector.register(sock, selectors.EVENT_READ, "read")

    def _read(self, selector, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(selector, sock)
            return
        entry = self._waiting[sock]
        entry[0] += data
        if any(end in entry[0] for end in _HEAD_ENDS):
            selector.unregister(sock)
            del self._waiting[sock]
            with self._lock:
                self._busy += 1
            self._pool.submit(self._handle, sock, entry[0])
        elif len(entry[0]) > MAX_HEAD_BYTES:
            try:
                sock.send(_TOO_LARGE)
            except OSError:
                pass
            self._drop(selector, sock)

    def _expire(self, selector) -> None:
        now = time.monotonic()
        while self._waiting:
            sock, (_, deadline) = next(iter(self._waiting.items()))
            if deadline > now:
                return
            self._drop(selector, sock)

    def _drop(self, selector, sock: socket.socket) -> None:
        self._waiting.pop(sock, None)
        try:
            selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    # -- the handler threads ---------------------------------------------------------------------

    def _handle(self, sock: socket.socket, head: bytes) -> None:
        try:
            sock.setblocking(True)
            sock.settimeout(self.io_timeout)
            address = sock.getpeername()[:2]
            self.RequestHandlerClass(_Connection(sock, head), address, self)
        except OSError:  # the client went away or timed out mid-request
            pass
        except Exception:
            log.exception("HTTP handler failed")
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            sock.close()
            with self._lock:
                self._busy -= 1

    # -- HTTPServer's surface --------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (from another thread) and wait until it has."""
        self._stop.set()
        self._wake_w.send(b"x")
        if self._running:
            self._stopped.wait()

    def server_close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for sock in (self.socket, self._wake_r, self._wake_w):
            sock.close()
