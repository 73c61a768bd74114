"""Worker metrics and health endpoints: what the processor and batcher report, what a scrape
reads from Redis, and a live worker's /metrics, /healthz and /readyz during a real job."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import RedisServer, WorkerProcess, free_port, wait_until
from faceq.errors import ConfigError
from faceq.job.spec import Item
from faceq.job.ledger import Ledger
from faceq.settings import Settings
from faceq.storage.store import open_storage
from faceq.models.weights import load_model
from devstack.samples import write_sample_set
from faceq.producer.submit import JobOptions, write_plan
from tests.conftest import REPO, job_rows, worker_env
from faceq.workers.batcher import MicroBatcher
from faceq.workers.endpoints import Endpoints
from faceq.workers.engine import Engine
from faceq.workers.metrics import JOB_LABEL_LIMIT, STAGES, BrokerCollector, GpuCollector, WorkerMetrics, quick_redis
from faceq.workers.service import ChunkProcessor

# -- helpers ----------------------------------------------------------------------------


def _get(url: str, timeout: float = 3.0) -> tuple[int, bytes] | None:
    """(status, body), also for 4xx/5xx; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """Parsed exposition: (sample name, sorted label items) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


class FakeModel:
    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, crops: np.ndarray):
        self.batches.append(len(crops))
        return np.zeros((len(crops), 512), np.float32), np.ones(len(crops), np.float32)


# -- unit: what the processor and the batcher report -------------------------------------


@pytest.fixture(scope="module")
def engine():
    return Engine(load_model(None, "ir_se_tiny", seed=2), "cpu", "fp32", max_batch=8)


@pytest.mark.parametrize("microbatch", [True, False], ids=["microbatch", "direct"])
def test_the_processor_and_batcher_report_rows_stages_and_batches(tmp_path, redis_server, engine, microbatch):
    storage = open_storage((tmp_path / "store").as_uri())
    ledger = Ledger.from_url(redis_server.url)
    metrics = WorkerMetrics()
    batcher = MicroBatcher(engine.infer, 8, 2, metrics=metrics) if microbatch else None
    processor = ChunkProcessor(Settings(io_threads=4), storage, ledger, engine, "w", batcher=batcher, metrics=metrics)
    samples = tmp_path / "samples"
    expected = write_sample_set(samples, n_good=12)
    items = [Item(name, (samples / name).as_uri(), {}) for name in sorted(expected)]
    header = write_plan(Settings(), storage, items=items, source=str(samples), job_id=f"m-{tmp_path.name}",
                        options=JobOptions("audit", chunk_size=8), allowed_sources=(samples.as_uri(),))
    ledger.start(header.job_id, header.run_id, "audit", header.n_chunks, header.n_items)
    try:
        for index in range(header.n_chunks):
            metrics.count_chunk(processor.process(header.chunk(index)))
        metrics.count_chunk(processor.process(header.chunk(0)))  # a redelivery: recorded, not recomputed
        metrics.count_chunk(None)
    finally:
        processor.close()
        if batcher:
            batcher.close()
    n_ok = sum(v == "ok" for v in expected.values())
    n_bad = len(expected) - n_ok
    s = metrics.sample
    assert s("faceq_images_total", {"status": "ok"}) == n_ok
    assert s("faceq_images_total", {"status": "error"}) == n_bad
    assert s("faceq_images_total", {"status": "no_face"}) == 0  # present from the start, at 0
    assert s("faceq_faces_total", {"status": "ok"}) == n_ok  # crop mode: one face per image
    assert s("faceq_items_flagged_total", {"reason": "error"}) == n_bad
    assert s("faceq_chunks_total", {"outcome": "done"}) == header.n_chunks
    assert s("faceq_chunks_total", {"outcome": "skipped"}) == 1
    assert s("faceq_chunks_total", {"outcome": "failed"}) == 1
    for stage in STAGES:  # device: only for chunks with at least one usable image
        count = s("faceq_chunk_seconds_count", {"stage": stage})
        assert (0 < count <= header.n_chunks) if stage == "device" else (count == header.n_chunks), stage
        assert s("faceq_chunk_seconds_sum", {"stage": stage}) > 0, stage
    assert s("faceq_chunk_seconds_sum", {"stage": "total"}) >= s("faceq_chunk_seconds_sum", {"stage": "device"})
    batches = s("faceq_device_batches_total")
    assert batches >= header.n_chunks
    assert s("faceq_device_batch_size_count") == s("faceq_device_batch_seconds_count") == batches
    assert s("faceq_device_batch_size_sum") == n_ok  # every good crop went through the model once
    assert s("faceq_device_batch_size_bucket", {"le": "8.0"}) == batches  # never above max_batch
    delays = s("faceq_microbatch_queue_delay_seconds_count")
    assert (delays >= header.n_chunks) if microbatch else (delays == 0)


def test_the_batcher_reports_each_batch_and_how_long_crops_waited():
    model, metrics = FakeModel(), WorkerMetrics()
    batcher = MicroBatcher(model, max_batch=16, max_delay_ms=50, metrics=metrics)
    try:
        futures = [batcher.submit(np.zeros((n, 112, 112, 3), np.uint8)) for n in (3, 20, 1)]
        for future in futures:
            future.result(timeout=10)
    finally:
        batcher.close()
    s = metrics.sample
    assert s("faceq_device_batches_total") == len(model.batches)
    assert s("faceq_device_batch_size_sum") == sum(model.batches) == 24
    assert s("faceq_device_batch_size_count") == len(model.batches)
    assert s("faceq_microbatch_queue_delay_seconds_count") >= 3  # at least one segment per request
    assert 0 <= s("faceq_microbatch_queue_delay_seconds_sum") < 10


def test_without_metrics_the_services_still_run(redis_server, engine):
    """The default is a no-op: nothing to pass, nothing recorded, nothing breaks."""
    batcher = MicroBatcher(FakeModel(), max_batch=4, max_delay_ms=1)
    try:
        embeddings, _ = batcher.infer(np.zeros((5, 112, 112, 3), np.uint8))
        assert embeddings.shape == (5, 512)
    finally:
        batcher.close()


# -- unit: what a scrape reads from Redis -------------------------------------------------


def test_scrapes_read_queue_depth_and_the_newest_running_jobs_only(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        client = server.client(decode_responses=True)
        ledger = Ledger(client)
        now = time.time()
        for k in range(JOB_LABEL_LIMIT + 5):  # more running jobs than get labels
            ledger.start(f"run-{k:02d}", "r", "audit", 4, 100, created_at=now - 1000 + k)
        ledger.start("half", "r", "audit", 4, 100, created_at=now - 100)
        ledger.record_chunk("half", "r", 0, {"n_items": 25, "n_errors": 2, "n_flagged": 3})
        ledger.start("moving", "r", "audit", 2, 40, created_at=now - 50)
        ledger.record_chunk("moving", "r", 0, {"n_items": 20})
        ledger.chunk_progress("moving", "r", 1, 7)  # a running chunk's items so far count, as in `faceq status`
        ledger.start("finished", "r", "audit", 1, 10, created_at=now)
        ledger.mark_done("finished", "r")
        ledger.start("finalize-gave-up", "r", "audit", 1, 10, created_at=now)
        ledger.record_failure("finalize-gave-up", "r", "finalize", "ArrowInvalid: …")
        client.rpush("q", "m1", "m2", "m3")
        client.rpush("q\x06\x166", "m4")  # a priority list of the same queue
        client.rpush("other-queue", "x")
        metrics = WorkerMetrics()
        metrics.register(BrokerCollector(quick_redis(server.url), "q"))
        s = metrics.sample
        assert s("faceq_queue_depth", {"queue": "q"}) == 4
        assert s("faceq_queue_unacked") == 0
        assert s("faceq_jobs_running") == JOB_LABEL_LIMIT + 7
        assert s("faceq_jobs_failed") == 1
        families = {f.name: f for f in metrics.registry.collect()}
        labelled = {sample.labels["job_id"] for sample in families["faceq_job_items_total"].samples}
        assert len(labelled) == JOB_LABEL_LIMIT  # bounded, newest first
        assert "half" in labelled and "finished" not in labelled and "run-00" not in labelled
        assert s("faceq_job_items_total", {"job_id": "half"}) == 100
        assert s("faceq_job_items_done", {"job_id": "half"}) == 25
        assert s("faceq_job_items_done", {"job_id": "moving"}) == ledger.progress("moving").items_done == 27
        assert s("faceq_job_errors", {"job_id": "half"}) == 2
        assert s("faceq_job_flagged", {"job_id": "half"}) == 3
        eta = s("faceq_job_eta_seconds", {"job_id": "half"})  # 100 s for 25 items: 300 s for the other 75
        assert eta is not None and math.isclose(eta, 300, rel_tol=0.05)
        assert s("faceq_job_eta_seconds", {"job_id": "run-24"}) is None  # nothing done yet: no estimate

        server.stop()
        started = time.monotonic()
        assert s("faceq_queue_depth", {"queue": "q"}) is None  # Redis down: no broker series, no error
        assert s("faceq_images_total", {"status": "ok"}) == 0  # the rest of the scrape is there
        assert time.monotonic() - started < 3


def test_health_endpoints_before_and_after_warm_up_and_without_the_broker(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        metrics = WorkerMetrics()
        endpoints = Endpoints("127.0.0.1", 0, metrics.registry, quick_redis(server.url).ping).start()
        base = f"http://127.0.0.1:{endpoints.port}"
        try:
            assert _get(f"{base}/healthz")[0] == 200
            status, body = _get(f"{base}/readyz")
            assert status == 503 and "warming up" in json.loads(body)["reason"]  # alive, not ready yet
            endpoints.mark_warm()
            assert _get(f"{base}/readyz") == (200, b'{"ready": true}')
            status, body = _get(f"{base}/metrics")
            assert status == 200 and b"faceq_images_total" in body
            assert _get(f"{base}/nope")[0] == 404
            server.stop()
            status, body = _get(f"{base}/readyz")
            assert status == 503 and json.loads(body)["reason"].startswith("broker unreachable")
            assert _get(f"{base}/healthz")[0] == 200
        finally:
            endpoints.close()
        assert _get(f"{base}/healthz", timeout=1) is None


def test_the_metrics_port_setting(monkeypatch):
    monkeypatch.delenv("FACEQ_METRICS_PORT", raising=False)
    monkeypatch.delenv("FACEQ_METRICS_ADDRESS", raising=False)
    assert Settings.from_env().metrics_port == 0  # unset: no port (python -m faceq.workers); compose sets 9808
    assert Settings.from_env().metrics_address == "127.0.0.1"
    monkeypatch.setenv("FACEQ_METRICS_PORT", "9808")
    assert Settings.from_env().metrics_port == 9808
    monkeypatch.setenv("FACEQ_METRICS_PORT", "70000")
    with pytest.raises(ConfigError):
        Settings.from_env()


def test_gpu_memory_and_utilisation_are_read_on_scrape(monkeypatch):
    """No GPU here: torch.cuda's readers are stood in for; NVML missing drops only utilisation."""
    import torch

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1_000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5_000)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 8_000)
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: 42)
    metrics = WorkerMetrics()
    metrics.register(GpuCollector("cuda:0", warm_memory_bytes=7_000))
    s = metrics.sample
    assert (s("faceq_gpu_memory_allocated_bytes"), s("faceq_gpu_memory_peak_bytes"),
            s("faceq_gpu_memory_reserved_bytes"), s("faceq_gpu_memory_warm_bytes")) == (1_000, 5_000, 8_000, 7_000)
    assert s("faceq_gpu_utilization_ratio") == pytest.approx(0.42)

    def no_nvml(device=None):
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    assert s("faceq_gpu_utilization_ratio") is None and s("faceq_gpu_memory_peak_bytes") == 5_000


def test_the_dashboard_and_readme_query_only_metrics_that_exist(tmp_path, monkeypatch):
    import torch

    for reader in ("memory_allocated", "max_memory_allocated", "memory_reserved", "utilization"):
        monkeypatch.setattr(torch.cuda, reader, lambda device=None: 1)
    with RedisServer(tmp_path / "redis") as server:
        Ledger(server.client(decode_responses=True)).start("j", "r", "audit", 1, 10)
        metrics = WorkerMetrics()
        metrics.register(GpuCollector("cuda:0", 1))
        metrics.register(BrokerCollector(quick_redis(server.url), "faceq"))
        names = {n for family in metrics.registry.collect()
                 for n in (family.name, *(sample.name for sample in family.samples))}
    dashboard = json.loads((REPO / "ops" / "grafana-dashboard.json").read_text())
    assert len(dashboard["panels"]) == 5
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    section = (REPO / "README.md").read_text().split("## Ops: metrics and health", 1)[1].split("\n## ", 1)[0]
    section = re.sub(r"(faceq_[a-z_]*)\{([a-z_]+(?:,[a-z_]+)+)\}([a-z_]+)",  # faceq_x_{a,b}_bytes
                     lambda m: " ".join(m[1] + part + m[3] for part in m[2].split(",")), section)
    used = set(re.findall(r"faceq_[a-z_]*[a-z]", " ".join(exprs) + section))
    assert used and used <= names, used - names


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_flower_refuses_without_credentials():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    # -o: never (re)install here; the check comes before Flower would start
    done = subprocess.run(["make", "-s", "-o", ".venv/.installed", "flower"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "FLOWER_BASIC_AUTH" in done.stderr


# -- integration: a live worker during a real job -----------------------------------------


@pytest.mark.integration
def test_a_live_worker_serves_metrics_that_move_during_a_job(tmp_path: Path):
    from celery import Celery

    samples = tmp_path / "samples"
    expected = write_sample_set(samples, n_good=18)
    store = (tmp_path / "store").as_uri()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    job_id = "metrics-job"
    with RedisServer(tmp_path / "redis") as redis_server:
        env = worker_env(redis_server.url, store, FACEQ_CHUNK_SIZE="8", FACEQ_MODES="crop",
                         FACEQ_METRICS_PORT=str(port))
        worker = WorkerProcess(env, tmp_path / "worker.log", hostname=f"metrics-{port}@localhost").launch()
        control = Celery(broker=redis_server.url)
        control.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
        cli = None
        try:
            wait_until(lambda: worker.alive() and _get(f"{base}/healthz", 1) is not None, 120, "/healthz")
            assert _get(f"{base}/healthz")[0] == 200
            wait_until(lambda: _get(f"{base}/readyz", 2)[0] == 200, 120, "/readyz to say ready")
            worker.wait_ready(60)

            # hold the job in the queue: its progress and the queue depth are then certain
            assert control.control.cancel_consumer("faceq", destination=[worker.hostname], reply=True, timeout=5)
            cli = subprocess.Popen([sys.executable, "-m", "faceq.producer", "audit", str(samples), "--job-id", job_id,
                                    "--mode", "crop", "--wait", "--no-progress"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            n_items, n_chunks = len(expected), math.ceil(len(expected) / 8)

            def queued() -> dict | None:
                got = _get(f"{base}/metrics")
                samples_ = _samples(got[1].decode()) if got and got[0] == 200 else {}
                return samples_ if _value(samples_, "faceq_queue_depth", queue="faceq") == n_chunks else None

            wait_until(lambda: queued() is not None, 60, "the job's chunks in the queue")
            during = queued()
            assert _value(during, "faceq_job_items_total", job_id=job_id) == n_items
            assert _value(during, "faceq_job_items_done", job_id=job_id) == 0
            assert _value(during, "faceq_jobs_running") == 1
            assert _value(during, "faceq_images_total", status="ok") == 0

            assert control.control.add_consumer("faceq", destination=[worker.hostname], reply=True, timeout=5)
            out, err = cli.communicate(timeout=120)
            assert cli.returncode == 0, err

            rows = job_rows(open_storage(store), job_id).to_pylist()
            assert len(rows) == n_items

            def job_gone() -> dict | None:
                got = _samples(_get(f"{base}/metrics")[1].decode())
                return got if _value(got, "faceq_job_items_total", job_id=job_id) is None else None

            wait_until(lambda: job_gone() is not None, 30, "the finished job's series to go")
            after = job_gone()
            for status in ("ok", "no_face", "error"):
                want = sum(r["status"] == status for r in rows)
                assert _value(after, "faceq_images_total", status=status) == want, status
                assert _value(after, "faceq_faces_total", status=status) == want, status
            n_errors = sum(r["status"] == "error" for r in rows)
            assert n_errors == sum(v != "ok" for v in expected.values()) > 0
            assert _value(after, "faceq_items_flagged_total", reason="error") == n_errors
            assert _value(after, "faceq_chunks_total", outcome="done") == n_chunks
            assert _value(after, "faceq_device_batches_total") > 0
            assert _value(after, "faceq_device_batch_size_sum") == n_items - n_errors
            for stage in STAGES:  # device: only for chunks with at least one usable image
                count = _value(after, "faceq_chunk_seconds_count", stage=stage)
                assert (0 < count <= n_chunks) if stage == "device" else (count == n_chunks), stage
            assert _value(after, "faceq_queue_depth", queue="faceq") == 0
            assert _value(after, "faceq_jobs_running") == 0
            info = {dict(labels)["model_id"] for (name, labels) in after if name == "faceq_model_info"}
            assert info == {"rts-ir_se_tiny-random-seed0"}

            # the broker goes away: not ready, still alive, metrics still served
            redis_server.stop(kill=True)
            wait_until(lambda: _get(f"{base}/readyz", 3)[0] == 503, 15, "/readyz to say 503")
            status, body = _get(f"{base}/readyz")
            assert status == 503 and json.loads(body)["reason"].startswith("broker unreachable")
            assert _get(f"{base}/healthz")[0] == 200
            status, body = _get(f"{base}/metrics")
            assert status == 200 and b"faceq_images_total" in body and b"faceq_queue_depth" not in body
            assert worker.alive()
        finally:
            if cli is not None and cli.poll() is None:
                cli.kill()
                cli.wait(10)
            control.close()
            worker.kill()  # the broker may be down: no warm shutdown to wait for
