"""End-to-end speed: real jobs through Redis, a worker process and storage.

One private redis-server for the whole run; worker processes are started one at a time
(each with its own settings) so no two compete for the queue or the CPU.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from devstack.processes import WorkerProcess, free_port, process_tree
from faceq.queue.heartbeats import read_heartbeats
from faceq.job.spec import Item
from faceq.job.ledger import Ledger
from faceq.settings import Settings, default_concurrency
from faceq.storage.store import Storage, open_storage
from devstack.samples import draw_face, encode
from faceq.producer.submit import JobOptions, submit


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (a worker's fork server
    and decoding children): the CPU a worker costs the machine."""
    return sum(ticks for _, ticks, _ in process_tree(pid).values()) / os.sysconf("SC_CLK_TCK")


def write_crops(storage: Storage, prefix: str, n: int) -> list[Item]:
    """``n`` distinct 112×112 JPEG face crops under ``prefix``; returns them as job items."""
    rng = np.random.default_rng(1)
    items = []
    for i in range(n):
        key = f"{prefix}/crop-{i:05d}.jpg"
        uri = storage.put_bytes(key, encode(draw_face(rng, 112), ".jpg"), "image/jpeg")
        items.append(Item(key, uri))
    return items


@contextmanager
def worker(env: dict[str, str], log_path: Path, device: str, concurrency: int):
    process = WorkerProcess(env, log_path, device=device, concurrency=concurrency)
    process.start(ready_timeout=300)
    try:
        yield process
    finally:
        process.stop()


def batching_stats(ledger: Ledger, worker: WorkerProcess) -> dict:
    """Images and device batches the worker ran, from its heartbeat (refreshed every 0.5 s here)."""
    time.sleep(1.2)
    beat = next((b for b in read_heartbeats(ledger.redis) if b["worker"] == worker.hostname), {})
    images, batches = beat.get("images_total"), beat.get("batches_total")
    mean = round(images / batches, 2) if images and batches else None
    return {"device_batches": batches, "mean_batch": mean}


class JobsFailed(RuntimeError):
    """A benchmark job failed, was cancelled or stalled: the figures would mean nothing."""


def wait_for_jobs(ledger: Ledger, job_ids: list[str], timeout: float, stall_seconds: float = 120,
                  interval: float = 0.05) -> None:
    """Block until every job is done; raise ``JobsFailed`` as soon as one cannot complete (a
    chunk or its finalize gave up), is cancelled, nothing moved for ``stall_seconds``, or after
    ``timeout``. A benchmark once waited 240 s on a job whose finalize had already failed."""
    started = last_move = time.monotonic()
    seen: tuple | None = None
    while True:
        states = [ledger.progress(job_id) for job_id in job_ids]
        for job_id, progress in zip(job_ids, states):
            if progress is None:
                raise JobsFailed(f"job {job_id} is gone from the ledger")
            if progress.cannot_complete or progress.state in ("failed", "cancelled"):
                reasons = "; ".join(f"{k}: {v}" for k, v in sorted(progress.failed.items())[:3]) or progress.state
                raise JobsFailed(f"job {job_id} cannot complete ({reasons})")
        if all(p.complete for p in states):
            return
        now = time.monotonic()
        moved = tuple((p.chunks_done, p.state) for p in states)
        if moved != seen:
            seen, last_move = moved, now
        if now - last_move > stall_seconds:
            done = sum(p.items_done for p in states)
            raise JobsFailed(f"{len(job_ids)} job(s) stalled: nothing finished for {stall_seconds:.0f} s "
                             f"({done}/{sum(p.n_items for p in states)} items)")
        if now - started > timeout:
            raise JobsFailed(f"{len(job_ids)} job(s) not done after {timeout:.0f} s")
        time.sleep(interval)


def run_jobs(ledger: Ledger, storage: Storage, settings: Settings, jobs_items: list[list[Item]], prefix: str,
             timeout: float, report: bool = True) -> tuple[float, list[str]]:
    """Submit every job at once and wait for all; returns (seconds, job ids)."""
    started = time.perf_counter()
    job_ids = []
    for k, items in enumerate(jobs_items):
        job_id = f"{prefix}-{k:05d}"
        submit(settings, storage, ledger, items=items, source="bench", job_id=job_id,
               options=JobOptions("audit", mode="crop", chunk_size=settings.chunk_size, report=report))
        job_ids.append(job_id)
    wait_for_jobs(ledger, job_ids, timeout)
    return time.perf_counter() - started, job_ids


def e2e(base_env: dict[str, str], workdir: Path, storage_url: str, s3_endpoint: str | None, arch: str, device: str,
        precision: str, batch: int, n_images: int, timeout: float) -> dict:
    """A job of ``n_images`` 112×112 JPEG crops in storage → Parquet rows, through a worker."""
    env = base_env | {"FACEQ_STORAGE_URL": storage_url, "FACEQ_MODEL_ARCH": arch, "FACEQ_PRECISION": precision,
                      "FACEQ_MAX_BATCH": str(batch), "FACEQ_CHUNK_SIZE": str(max(batch, 64)), "FACEQ_MODES": "crop"}
    if s3_endpoint:
        env["FACEQ_S3_ENDPOINT_URL"] = s3_endpoint
    storage = open_storage(storage_url, s3_endpoint)
    ledger = Ledger.from_url(env["FACEQ_BROKER_URL"])
    settings = Settings(broker_url=env["FACEQ_BROKER_URL"], storage_url=storage_url, chunk_size=max(batch, 64))
    items = write_crops(storage, f"bench-inputs/{arch}", n_images)
    concurrency = default_concurrency(device)
    with worker(env, workdir / f"worker-e2e-{arch}-{storage_url.split(':')[0]}.log", device, concurrency) as w:
        cpu_before = cpu_seconds(w.process.pid)
        seconds, _ = run_jobs(ledger, storage, settings, [items], f"e2e-{arch}-{storage_url.split(':')[0]}", timeout)
        cpu = cpu_seconds(w.process.pid) - cpu_before
        batching = batching_stats(ledger, w)
    return {"ips": round(n_images / seconds, 2), "images": n_images, "seconds": round(seconds, 3),
            "worker_cpu_percent": round(100 * cpu / seconds, 1), **batching}


def one_image_jobs(base_env: dict[str, str], workdir: Path, arch: str, device: str, precision: str, batch: int,
                   n_jobs: int, microbatch: bool, concurrency: int, timeout: float) -> dict:
    """``n_jobs`` one-image jobs at once, cross-task micro-batching on or off."""
    storage_url = (workdir / "store").as_uri()
    env = base_env | {"FACEQ_STORAGE_URL": storage_url, "FACEQ_MODEL_ARCH": arch, "FACEQ_PRECISION": precision,
                      "FACEQ_MAX_BATCH": str(batch), "FACEQ_MICROBATCH": "1" if microbatch else "0",
                      "FACEQ_MODES": "crop"}
    storage = open_storage(storage_url)
    ledger = Ledger.from_url(env["FACEQ_BROKER_URL"])
    settings = Settings(broker_url=env["FACEQ_BROKER_URL"], storage_url=storage_url, chunk_size=1)
    items = write_crops(storage, f"bench-inputs/one-image-{arch}", n_jobs)
    label = "microbatch" if microbatch else "per-image"
    with worker(env, workdir / f"worker-{label}-{arch}.log", device, concurrency) as w:
        cpu_before = cpu_seconds(w.process.pid)
        # image jobs: summary and review list, no HTML report (plotting would cost more than the image)
        seconds, _ = run_jobs(ledger, storage, settings, [[item] for item in items], f"{label}-{arch}", timeout,
                              report=False)
        cpu = cpu_seconds(w.process.pid) - cpu_before
        batching = batching_stats(ledger, w) if microbatch else {"device_batches": n_jobs, "mean_batch": 1.0}
    return {"ips": round(n_jobs / seconds, 2), "jobs": n_jobs, "seconds": round(seconds, 3),
            "concurrency": concurrency, "worker_cpu_percent": round(100 * cpu / seconds, 1), **batching}


def python_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEQ_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["FACEQ_HEARTBEAT_SECONDS"] = "0.5"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env




def start_moto(base_env: dict[str, str]):
    """moto's S3 server on loopback with a ``faceq-bench`` bucket, and throw-away credentials for
    it in this process and in ``base_env`` (the workers'); → (server, endpoint URL)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(credentials)
    base_env.update(credentials)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="faceq-bench")
    return server, endpoint
