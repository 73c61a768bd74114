"""The chaos-test machinery itself: Redis stop/restart (with and without AOF), a worker's
kill -9, and the loopback TCP proxy that simulates a storage outage."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
import urllib.request

import pytest
import redis

from devstack.processes import RedisServer, TcpProxy, WorkerProcess, free_port


# -- redis-server ---------------------------------------------------------------------------

@pytest.mark.integration
def test_redis_with_aof_keeps_acknowledged_writes_through_a_kill(tmp_path):
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        port = server.port
        client = server.client()
        client.set("faceq:test", "kept")
        client.hset("faceq:hash", mapping={"a": "1", "b": "2"})
        server.stop(kill=True)
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            server.client(socket_connect_timeout=1).ping()
        server.restart()
        assert server.port == port and server.url.endswith(f":{port}/0")
        client = server.client()
        assert client.get("faceq:test") == b"kept"
        assert client.hgetall("faceq:hash") == {b"a": b"1", b"b": b"2"}
        assert any((tmp_path / "redis").rglob("*.aof"))


@pytest.mark.integration
def test_redis_without_persistence_loses_everything_on_restart(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        server.client().set("faceq:test", "gone")
        with server.outage():
            assert not server.running
        assert server.running
        assert server.client().get("faceq:test") is None
        assert not any((tmp_path / "redis").rglob("*.aof")) and not any((tmp_path / "redis").rglob("*.rdb"))


@pytest.mark.integration
def test_redis_with_a_password(tmp_path):
    with RedisServer(tmp_path / "redis", password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(1024).startswith(b"-NOAUTH")
        server.restart()
        assert server.client().ping()


# -- worker processes -----------------------------------------------------------------------

def test_worker_kill_is_a_sigkill(tmp_path):
    worker = WorkerProcess({}, tmp_path / "w.log")
    # the real `python -m faceq.workers` is covered by the integration tests; this checks the signal
    worker.args = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('up', flush=True); time.sleep(60)"]
    worker.launch()
    deadline = time.monotonic() + 10
    while "up" not in worker.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.alive() and worker.rss_bytes() > 0
    started = time.monotonic()
    worker.kill()
    assert time.monotonic() - started < 5
    assert not worker.alive() and worker.process.returncode == -9
    assert worker.rss_bytes() is None
    worker.stop()  # harmless afterwards


# -- the TCP proxy --------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/hang":  # answer nothing: the client waits until the proxy cuts it
            time.sleep(10)
            return
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def test_proxy_forwards_requests(http_server):
    with TcpProxy("127.0.0.1", http_server.server_address[1]) as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        assert _get(f"{proxy.url}/a") == b"hello /a"
        big = [_get(f"{proxy.url}/{i}") for i in range(20)]
        assert big[19] == b"hello /19"
        assert proxy.connections_total == 21


def test_proxy_cut_resets_open_connections_and_refuses_new_ones(http_server):
    with TcpProxy("127.0.0.1", http_server.server_address[1]) as proxy:
        assert _get(f"{proxy.url}/before") == b"hello /before"
        hanging = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        hanging.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        assert proxy.active_connections >= 1
        started = time.monotonic()
        proxy.cut()
        assert proxy.is_cut and proxy.active_connections == 0
        with pytest.raises(ConnectionResetError):  # the open connection fails at once
            if hanging.recv(1024) == b"":
                raise ConnectionResetError("closed")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        with pytest.raises(OSError):
            _get(f"{proxy.url}/during", timeout=5)
        assert time.monotonic() - started < 2  # failing fast, not timing out
        hanging.close()
        with pytest.raises(OSError):  # the port stays reserved while cut
            socket.socket().bind(("127.0.0.1", proxy.port))
        proxy.restore()
        assert not proxy.is_cut
        assert _get(f"{proxy.url}/after") == b"hello /after"
        with proxy.outage():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert _get(f"{proxy.url}/again") == b"hello /again"


def test_proxy_latency_slows_each_direction(http_server):
    with TcpProxy("127.0.0.1", http_server.server_address[1], latency=0.15) as proxy:
        started = time.monotonic()
        assert _get(f"{proxy.url}/slow") == b"hello /slow"
        assert time.monotonic() - started >= 0.3


def test_proxy_to_a_dead_target_resets_the_client():
    with TcpProxy("127.0.0.1", free_port()) as proxy:
        with pytest.raises(OSError):
            _get(f"{proxy.url}/x", timeout=5)


@pytest.mark.integration
def test_proxy_in_front_of_moto_s3(s3_endpoint):
    import boto3
    from botocore.config import Config

    with TcpProxy.to_url(s3_endpoint) as proxy:
        config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=5)
        s3 = boto3.client("s3", endpoint_url=proxy.url, config=config)
        s3.create_bucket(Bucket="devstack-proxy")
        s3.put_object(Bucket="devstack-proxy", Key="k", Body=b"through the proxy")
        assert s3.get_object(Bucket="devstack-proxy", Key="k")["Body"].read() == b"through the proxy"
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            s3.get_object(Bucket="devstack-proxy", Key="k")
        assert time.monotonic() - started < 3
        assert "Connect" in type(failed.value).__name__ or "connect" in str(failed.value).lower()
        proxy.restore()
        assert s3.get_object(Bucket="devstack-proxy", Key="k")["Body"].read() == b"through the proxy"
