"""One small HTTP port per worker: ``/metrics``, ``/healthz`` and ``/readyz``.

Started before the model loads when ``FACEQ_METRICS_PORT`` is set (unset or 0: no port), on
``FACEQ_METRICS_ADDRESS`` (default ``127.0.0.1``; compose sets ``0.0.0.0`` inside the
container network). The endpoints carry no secrets and take no input, but the metrics name
jobs: bind them where only your Prometheus reaches.

- ``/healthz``: 200 while the process is alive (also during loading and warm-up).
- ``/readyz``: 200 once the model is warm and the broker answers a ping within 1 s; otherwise
  503 with a JSON ``reason`` (still loading, or the broker is unreachable).
- ``/metrics``: the worker's ``faceq_*`` metrics (``faceq.workers.metrics``), Prometheus text format
  (or OpenMetrics when the scraper asks for it).

The port is served by ``faceq.httpserve.BoundedHTTPServer``: one selector thread and
``HTTP_THREADS`` handler threads whatever the clients do, at most ``MAX_CONNECTIONS`` open,
``TIMEOUT_S`` to send a request, so a scraper gone wrong or a slowloris cannot grow the worker.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from faceq.errors import ConfigError
from faceq.httpserve import BoundedHTTPServer
from faceq.redact import redact_text

log = logging.getLogger(__name__)

HTTP_THREADS = 4  # handler threads: a scrape takes milliseconds
MAX_CONNECTIONS = 64
TIMEOUT_S = 5.0  # to send a request head, and per socket read/write after it


class Endpoints:
    def __init__(self, address: str, port: int, registry: CollectorRegistry, ping: Callable[[], object]):
        self.registry = registry
        self.ping = ping
        self.warm = False
        try:
            self.server = BoundedHTTPServer((address, port), _handler(self), threads=HTTP_THREADS,
                                            max_connections=MAX_CONNECTIONS, head_timeout=TIMEOUT_S,
                                            io_timeout=TIMEOUT_S, name="faceq-metrics-http")
        except OSError as exc:
            raise ConfigError(f"FACEQ_METRICS_PORT={port}: cannot listen on {address}:{port}: {exc}") from None
        self.address, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, name="faceq-metrics", daemon=True)

    def start(self) -> "Endpoints":
        self._thread.start()
        log.info("metrics and health on http://%s:%d (/metrics, /healthz, /readyz)", self.address, self.port)
        return self

    def mark_warm(self) -> None:
        self.warm = True

    def close(self) -> None:
        self.warm = False
        self.server.shutdown()
        self.server.server_close()

    def readiness(self) -> tuple[int, dict]:
        if not self.warm:
            return 503, {"ready": False, "reason": "the model is loading or warming up"}
        try:
            self.ping()
        except Exception as exc:
            return 503, {"ready": False, "reason": f"broker unreachable: {redact_text(f'{type(exc).__name__}: {exc}')}"}
        return 200, {"ready": True}


def _handler(endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "faceq-worker"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/healthz":
                self._send(200, "application/json", json.dumps({"alive": True}).encode())
            elif path == "/readyz":
                status, body = endpoints.readiness()
                self._send(status, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                try:
                    encoder, content_type = choose_encoder(self.headers.get("Accept"))
                    body = encoder(endpoints.registry)
                except Exception as exc:  # a collector bug: say so, keep serving
                    log.exception("metrics not generated")
                    self._send(500, "text/plain; charset=utf-8", f"metrics failed: {type(exc).__name__}\n".encode())
                    return
                self._send(200, content_type, body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, format, *args):  # healthchecks every few seconds: not in the worker's log
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def start_endpoints(settings, registry: CollectorRegistry, ping: Callable[[], object]) -> Endpoints | None:
    """The worker's HTTP port, answering at once (``/readyz`` says 503 until ``mark_warm``), or
    None when ``FACEQ_METRICS_PORT`` is unset or 0."""
    if not settings.metrics_port:
        return None
    return Endpoints(settings.metrics_address, settings.metrics_port, registry, ping).start()
