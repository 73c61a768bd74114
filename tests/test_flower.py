"""Flower, started as `make flower` starts it, sees the worker and the job's tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from devstack.processes import RedisServer, free_port, wait_until
from devstack.samples import write_sample_set
from tests.conftest import start_worker, worker_env

pytestmark = pytest.mark.integration


def _get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def test_flower_lists_the_worker_and_the_succeeded_chunk_tasks(tmp_path: Path):
    samples = tmp_path / "samples"
    write_sample_set(samples, n_good=10)
    with RedisServer(tmp_path / "redis") as redis_server:
        env = worker_env(redis_server.url, (tmp_path / "store").as_uri(), FACEQ_CHUNK_SIZE="4")
        port = free_port()
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "faceq.workers.app", "flower", f"--port={port}", "--address=127.0.0.1"],
            env=env | {"FLOWER_UNAUTHENTICATED_API": "true"},
            stdout=(tmp_path / "flower.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        worker = start_worker(env, tmp_path, "flower-worker")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: _get_json(f"{base}/api/workers?refresh=1") is not None, 60, "Flower's API")
            done = subprocess.run([sys.executable, "-m", "faceq.producer", "audit", str(samples), "--job-id", "flower-job",
                                   "--mode", "crop", "--wait", "--no-progress"], env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stderr

            def worker_listed() -> bool:
                return worker.hostname in (_get_json(f"{base}/api/workers?refresh=1") or {})

            wait_until(worker_listed, 30, "Flower to list the worker")

            def succeeded_chunks() -> list[dict]:
                tasks = _get_json(f"{base}/api/tasks?state=SUCCESS") or {}
                return [t for t in tasks.values() if t.get("name") == "faceq.process_chunk"]

            wait_until(lambda: len(succeeded_chunks()) == 4, 30, "Flower to show the 4 succeeded chunk tasks")
            assert {t["worker"] for t in succeeded_chunks()} == {worker.hostname}
        finally:
            worker.stop()
            flower.terminate()
            flower.wait(10)
