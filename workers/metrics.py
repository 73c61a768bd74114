"""Prometheus metrics of one worker, all named ``faceq_*``, on a registry of their own.

The chunk processor (``faceq.workers.service``) and the micro-batcher (``faceq.workers.batcher``) report
to a metrics object; by default that is ``NULL_METRICS``, which records nothing, so both stay
plain services that need no Prometheus. ``WorkerMetrics`` records:

  ``faceq_images_total{status}``             input images (items), by row status ok | no_face | error
  ``faceq_faces_total{status}``              result rows: one per face (``--all-faces``), else one per image
  ``faceq_items_flagged_total{reason}``      rows flagged for review, per reason (a bounded set; ``other``)
  ``faceq_chunks_total{outcome}``            chunk tasks: done | skipped (already recorded) | stale | failed
  ``faceq_chunk_seconds{stage}``             histogram per chunk: prepare (fetch + decode + detect/align),
                                             device (waiting for the embeddings), write (the Parquet part),
                                             record (the ledger), total
  ``faceq_device_batches_total``             batches sent through the model
  ``faceq_device_batch_size``                histogram of crops per batch
  ``faceq_device_batch_seconds``             histogram of seconds per batch (``_sum``: device busy time)
  ``faceq_microbatch_queue_delay_seconds``   histogram: how long crops waited for their batch to start
  ``faceq_model_info{…}``                    worker, device, precision, model_id, arch, batch settings

and, read on every scrape (``collect``), never cached:

  ``faceq_gpu_memory_{warm,allocated,peak,reserved}_bytes``, ``faceq_gpu_utilization_ratio``
                                             CUDA only (utilisation only where NVML answers); absent on the CPU
  ``faceq_queue_depth{queue}``               messages waiting in the Celery queue (LLEN, every priority)
  ``faceq_queue_unacked``                    messages delivered to some worker and not yet acknowledged
  ``faceq_jobs_running``                     running jobs among the newest ``JOB_SCAN`` in the ledger
  ``faceq_jobs_failed``                      … and those whose finalize gave up (state ``failed``)
  ``faceq_job_items_total{job_id}``, ``faceq_job_items_done``, ``faceq_job_flagged``,
  ``faceq_job_errors``, ``faceq_job_eta_seconds``
                                             the ``JOB_LABEL_LIMIT`` newest running jobs only (bounded
                                             label cardinality; a finished job's series disappear)

Redis is read with 1 s timeouts and no retries; when it is down the broker series are simply
absent (the scrape still succeeds). Every worker exposes the same job series: aggregate them
with ``max by (job_id)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter as Tally
from contextlib import nullcontext
from typing import Callable, Iterable

import numpy as np
import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from faceq.job.ledger import JOBS_INDEX_KEY, ChunkRecord, Ledger, items_done

log = logging.getLogger(__name__)

STATUSES = ("ok", "no_face", "error")
REASONS = ("error", "no_face", "multiple_faces", "low_quality", "likely_not_a_face", "not_enrolled",
           "possible_impersonation", "grey_zone")
STAGES = ("prepare", "device", "write", "record", "total")
OUTCOMES = ("done", "skipped", "stale", "failed")
JOB_LABEL_LIMIT = 20  # running jobs exported with a job_id label, newest first
JOB_SCAN = 500  # newest jobs of the ledger's index looked at for running ones (one pipeline)
REDIS_TIMEOUT_SECONDS = 1.0
# kombu's Redis transport: a queue is one list per priority step, named queue + sep + step
KOMBU_PRIORITY_SEP, KOMBU_PRIORITY_STEPS, KOMBU_UNACKED_KEY = "\x06\x16", (0, 3, 6, 9), "unacked"

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def quick_redis(url: str) -> redis.Redis:
    """A client for scrapes and readiness: 1 s timeouts, no retries (a down broker answers at once)."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                                socket_timeout=REDIS_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0))


class NullMetrics:
    """The metrics of a processor or batcher that nobody scrapes: every report is dropped."""

    def stage(self, name: str):
        return nullcontext()

    def observe_stage(self, name: str, seconds: float) -> None:
        pass

    def count_rows(self, rows: Iterable) -> None:
        pass

    def count_chunk(self, outcome) -> None:
        pass

    def observe_batch(self, size: int, seconds: float, delays: Iterable[float] = ()) -> None:
        pass

    def direct_infer(self, infer: Callable, max_batch: int | None = None) -> Callable:
        return infer


NULL_METRICS = NullMetrics()


class _Timer:
    def __init__(self, metrics: "WorkerMetrics", stage: str):
        self.metrics, self.name = metrics, stage

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:  # latencies of stages that finished; failures are counted per chunk
            self.metrics.observe_stage(self.name, time.perf_counter() - self.started)


class WorkerMetrics(NullMetrics):
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.images = Counter("faceq_images", "Input images (items) processed, by status", ["status"], registry=r)
        self.faces = Counter("faceq_faces", "Result rows written (one per face with --all-faces, else one per "
                             "image), by status", ["status"], registry=r)
        self.flagged = Counter("faceq_items_flagged", "Rows flagged for review, per reason (a row may have "
                               "several)", ["reason"], registry=r)
        self.chunks = Counter("faceq_chunks", "Chunk tasks, by outcome", ["outcome"], registry=r)
        self.chunk_seconds = Histogram("faceq_chunk_seconds", "Seconds per chunk, by stage: prepare (fetch + "
                                       "decode + detect), device, write, record, total", ["stage"],
                                       buckets=CHUNK_BUCKETS, registry=r)
        self.batches = Counter("faceq_device_batches", "Batches sent through the model", registry=r)
        self.batch_size = Histogram("faceq_device_batch_size", "Crops per device batch", buckets=BATCH_SIZE_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram("faceq_device_batch_seconds", "Seconds per device batch (the sum is the "
                                       "device's busy time)", buckets=BATCH_SECONDS_BUCKETS, registry=r)
        self.queue_delay = Histogram("faceq_microbatch_queue_delay_seconds", "Seconds crops waited in the "
                                     "micro-batcher before their batch started", buckets=DELAY_BUCKETS, registry=r)
        self.model = Info("faceq_model", "What this worker runs", registry=r)
        for status in STATUSES:  # every series exists from the start, so rate() sees the first increase
            self.images.labels(status)
            self.faces.labels(status)
        for reason in (*REASONS, "other"):
            self.flagged.labels(reason)
        for outcome in OUTCOMES:
            self.chunks.labels(outcome)
        for stage in STAGES:
            self.chunk_seconds.labels(stage)
        self._collectors: list[Collector] = []

    # -- reported by the processor, the batcher and the task ----------------------------

    def stage(self, name: str) -> _Timer:
        """``with metrics.stage("write"): …`` observes the block's seconds (when it succeeds)."""
        return _Timer(self, name)

    def observe_stage(self, name: str, seconds: float) -> None:
        self.chunk_seconds.labels(name).observe(seconds)

    def count_rows(self, rows: Iterable) -> None:
        """A chunk's result rows: images (its first row per item), rows and review reasons."""
        images, faces, reasons = Tally(), Tally(), Tally()
        for row in rows:
            status = row.status if row.status in STATUSES else "error"
            faces[status] += 1
            if row.face_index == 0:  # every item's first (or only) row
                images[status] += 1
            for reason in row.review_reasons or ():
                reasons[reason if reason in REASONS else "other"] += 1
        for status, n in images.items():
            self.images.labels(status).inc(n)
        for status, n in faces.items():
            self.faces.labels(status).inc(n)
        for reason, n in reasons.items():
            self.flagged.labels(reason).inc(n)

    def count_chunk(self, outcome) -> None:
        """A task's ``ChunkOutcome`` (None: the chunk failed for good)."""
        if outcome is None:
            label = "failed"
        elif outcome.skipped:
            label = "skipped"
        elif outcome.record is ChunkRecord.STALE:
            label = "stale"
        else:
            label = "done"
        self.chunks.labels(label).inc()

    def observe_batch(self, size: int, seconds: float, delays: Iterable[float] = ()) -> None:
        self.batches.inc()
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        for delay in delays:
            self.queue_delay.observe(max(0.0, delay))

    def direct_infer(self, infer: Callable, max_batch: int | None = None) -> Callable:
        """``infer`` (the engine's, used when micro-batching is off) reporting its batches: the
        engine cuts a call into batches of ``max_batch``; their seconds are apportioned by size."""

        def timed(crops: np.ndarray):
            started = time.perf_counter()
            result = infer(crops)
            seconds, n = time.perf_counter() - started, len(crops)
            step = max_batch or n
            for begin in range(0, n, max(step, 1)):
                size = min(step, n - begin)
                self.observe_batch(size, seconds * size / n)
            return result

        return timed

    # -- set once the worker is warm ----------------------------------------------------

    def describe(self, settings, engine, worker: str, microbatch: bool, client: redis.Redis | None = None) -> None:
        """Model info, and the collectors read on scrape: the GPU (CUDA only), the queue and the
        running jobs (``client``: a ``quick_redis`` of the broker; one is made if not given)."""
        info = engine.info
        self.model.info({
            "worker": worker,
            "device": info.device,
            "precision": info.precision,
            "model_id": info.model_id,
            "model_arch": settings.model_arch,
            "random_weights": str(bool(info.random_weights)).lower(),
            "stand_in": str(bool(getattr(info, "stand_in", False))).lower(),
            "max_batch": str(info.max_batch),
            "max_delay_ms": str(settings.max_delay_ms),
            "microbatch": str(bool(microbatch)).lower(),
            "modes": ",".join(settings.modes),
        })
        if str(info.device).startswith("cuda") and not getattr(info, "stand_in", False):
            self.register(GpuCollector(engine.device, info.warm_memory_bytes))
        self.register(BrokerCollector(client or quick_redis(settings.broker_url), settings.queue))

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)
        self._collectors.append(collector)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's current value (tests and logs): ``sample("faceq_images_total", {"status": "ok"})``."""
        return self.registry.get_sample_value(name, labels or {})


class GpuCollector:
    """Warm, allocated, peak and reserved memory of the worker's CUDA device, and its utilisation."""

    def __init__(self, device, warm_memory_bytes: int | None):
        self.device = device
        self.warm = warm_memory_bytes

    def collect(self):
        import torch

        families = []

        def gauge(name: str, doc: str, value: float | None) -> None:
            if value is not None:
                family = GaugeMetricFamily(name, doc)
                family.add_metric([], float(value))
                families.append(family)

        gauge("faceq_gpu_memory_warm_bytes", "GPU memory reserved after the warm-up", self.warm)
        try:
            gauge("faceq_gpu_memory_allocated_bytes", "GPU memory allocated by tensors now",
                  torch.cuda.memory_allocated(self.device))
            gauge("faceq_gpu_memory_peak_bytes", "Peak GPU memory allocated by tensors since start",
                  torch.cuda.max_memory_allocated(self.device))
            gauge("faceq_gpu_memory_reserved_bytes", "GPU memory held by PyTorch's caching allocator",
                  torch.cuda.memory_reserved(self.device))
        except Exception as exc:  # never fail a scrape
            log.debug("GPU memory not read: %s", exc)
        try:  # NVML (the nvidia-ml-py package); absent → no utilisation series
            gauge("faceq_gpu_utilization_ratio", "GPU busy fraction over the last sample period (NVML)",
                  torch.cuda.utilization(self.device) / 100.0)
        except Exception:
            pass
        return families


class BrokerCollector:
    """Queue depth and the progress of running jobs, read from Redis on every scrape."""

    def __init__(self, client: redis.Redis, queue: str, job_limit: int = JOB_LABEL_LIMIT, scan: int = JOB_SCAN):
        self.client = client
        self.queue = queue
        self.job_limit = job_limit
        self.scan = scan

    def collect(self):
        try:
            return self._queue() + self._jobs(time.time())
        except (redis.RedisError, OSError, ValueError, KeyError) as exc:  # down or hung: no broker series
            log.debug("broker metrics not read: %s", exc)
            return []

    def _queue(self) -> list:
        pipe = self.client.pipeline(transaction=False)
        for step in KOMBU_PRIORITY_STEPS:
            pipe.llen(self.queue if step == 0 else f"{self.queue}{KOMBU_PRIORITY_SEP}{step}")
        pipe.hlen(KOMBU_UNACKED_KEY)
        *lengths, unacked = pipe.execute()
        depth = GaugeMetricFamily("faceq_queue_depth", "Messages waiting in the Celery queue", labels=["queue"])
        depth.add_metric([self.queue], float(sum(lengths)))
        held = GaugeMetricFamily("faceq_queue_unacked", "Messages delivered to a worker and not yet "
                                 "acknowledged (every queue)")
        held.add_metric([], float(unacked))
        return [depth, held]

    def _jobs(self, now: float) -> list:
        ids = self.client.zrevrange(JOBS_INDEX_KEY, 0, self.scan - 1)
        fields = ("state", "n_items", "items_done", "flagged", "errors", "created_at")
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(Ledger._key(job_id), *fields)
        states = list(zip(ids, pipe.execute()))
        running = [(job_id, dict(zip(fields, values))) for job_id, values in states if values[0] == "running"]
        labelled = running[: self.job_limit]  # newest first
        pipe = self.client.pipeline(transaction=False)
        for job_id, _ in labelled:  # items of running chunks too: the figure `faceq status` shows
            pipe.hvals(Ledger._key(job_id, ":partial"))
        for (_, job), partial in zip(labelled, pipe.execute()):
            job["items_done"] = items_done(job["items_done"], partial, job["n_items"])
        count = GaugeMetricFamily("faceq_jobs_running", "Running jobs (among the newest in the ledger)")
        count.add_metric([], float(len(running)))
        failed = GaugeMetricFamily("faceq_jobs_failed", "Jobs whose finalize gave up (among the newest in the "
                                   "ledger): `faceq status` says why, `faceq resume` runs them again")
        failed.add_metric([], float(sum(values[0] == "failed" for _, values in states)))
        total = GaugeMetricFamily("faceq_job_items_total", "Items of a running job", labels=["job_id"])
        done = GaugeMetricFamily("faceq_job_items_done", "Items of a running job with results (recorded chunks and "
                                 "the running chunks' items so far: what `faceq status` shows)", labels=["job_id"])
        flagged = GaugeMetricFamily("faceq_job_flagged", "Rows of a running job flagged for review",
                                    labels=["job_id"])
        errors = GaugeMetricFamily("faceq_job_errors", "Error rows of a running job", labels=["job_id"])
        eta = GaugeMetricFamily("faceq_job_eta_seconds", "Seconds until a running job's last item, at its "
                                "average rate since it was submitted", labels=["job_id"])
        for job_id, job in labelled:
            n_items, n_done = int(job["n_items"] or 0), int(job["items_done"] or 0)
            total.add_metric([job_id], float(n_items))
            done.add_metric([job_id], float(n_done))
            flagged.add_metric([job_id], float(int(job["flagged"] or 0)))
            errors.add_metric([job_id], float(int(job["errors"] or 0)))
            elapsed = now - float(job["created_at"] or now)
            if 0 < n_done and elapsed > 0:
                remaining = elapsed / n_done * max(n_items - n_done, 0)
                if math.isfinite(remaining):
                    eta.add_metric([job_id], remaining)
        return [count, failed, total, done, flagged, errors, eta]
