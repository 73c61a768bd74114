"""The per-process worker state: settings, storage, ledger and the warm engine.

Built once by the ``celeryd_after_setup`` signal, in the process that runs tasks (the worker uses
the ``threads`` pool, so no CUDA context ever crosses a fork), before the worker
consumes its first message. A model that cannot load stops the worker at start, loudly.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
from dataclasses import dataclass

from faceq.workers.celeryconfig import VISIBILITY_TIMEOUT
from faceq.outputs import report
from faceq.errors import ModelError
from faceq.job.ledger import Ledger
from faceq.settings import Settings
from faceq.storage.store import Storage
from faceq.models.detect import YUNET_HELP, FaceDetector
from faceq.models.null import NULL_MODEL_ID, STAND_IN_WARNING
from faceq.models.weights import load_model
from faceq.workers.batcher import MicroBatcher
from faceq.workers.crop_pool import CropPool
from faceq.workers.endpoints import Endpoints, start_endpoints
from faceq.workers.engine import Engine
from faceq.workers.health import Heartbeat
from faceq.workers.leases import LeaseKeeper
from faceq.workers.sweeper import Sweeper
from faceq.workers.metrics import WorkerMetrics, quick_redis
from faceq.workers.service import ChunkProcessor, usable_cores

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    ledger: Ledger
    engine: Engine
    processor: ChunkProcessor
    batcher: MicroBatcher | None
    heartbeat: Heartbeat
    leases: LeaseKeeper
    metrics: WorkerMetrics | None = None
    endpoints: Endpoints | None = None  # FACEQ_METRICS_PORT: /metrics, /healthz, /readyz
    sweeper: Sweeper | None = None  # finishes stalled jobs from storage (a Redis restart's losses)


_runtime: Runtime | None = None
_lock = threading.Lock()


def build_runtime(settings: Settings, worker_name: str | None = None) -> Runtime:
    metrics = WorkerMetrics()
    # up before the model loads: /healthz answers at once, /readyz says 503 until mark_warm below
    endpoints = start_endpoints(settings, metrics.registry, quick_redis(settings.broker_url).ping)
    storage = settings.open_storage()
    ledger = settings.open_ledger()
    loaded = load_model(settings.model_weights, settings.model_arch, settings.model_seed, settings.s3_endpoint_url)
    engine = Engine(loaded, settings.device, settings.precision, settings.max_batch, settings.inference)
    detector = None
    if "detect" in settings.modes:
        if not settings.detector_weights:
            raise ModelError(YUNET_HELP)
        detector = FaceDetector(settings.detector_weights, settings.detect_score, max_side=settings.detect_max_side,
                                engine=settings.detect_engine, threads=settings.detect_threads)
    name = worker_name or f"faceq-{settings.device.replace(':', '')}@{socket.gethostname()}"
    batcher = (MicroBatcher(engine.infer, settings.max_batch, settings.max_delay_ms, metrics=metrics)
               if settings.microbatch else None)
    processor = ChunkProcessor(settings, storage, ledger, engine, name, detector, batcher, metrics=metrics,
                               crop_pool=start_crop_pool(settings))
    report.warm_up()
    heartbeat = Heartbeat(ledger.redis, name, settings, engine, batcher).start()
    leases = LeaseKeeper(ledger.redis, interval=max(1.0, VISIBILITY_TIMEOUT / 3)).start()
    sweeper = Sweeper(ledger, storage, settings.queue, settings.broker_url, settings.stall_seconds,
                      interval=max(1.0, min(5.0, settings.stall_seconds / 3))).start()
    log.info("faceq worker ready: device=%s modes=%s micro-batching=%s storage=%s model_id=%s%s", engine.device,
             ",".join(settings.modes), "on" if batcher else "off", storage.url, engine.model_id,
             "" if detector is None else f" detect={settings.detect_path} path, YuNet in {detector.engine}")
    if engine.stand_in:  # said again last, where whoever reads the start-up log looks
        log.warning("*" * 100)
        log.warning(STAND_IN_WARNING, NULL_MODEL_ID)
        log.warning("*" * 100)
    metrics.describe(settings, engine, name, microbatch=batcher is not None)
    # everything built so far (modules, the model, Celery) lives as long as the worker: the
    # collector need not walk it again at every full collection (those cost a chunk's result
    # building about 5× its CPU when they fell inside it)
    gc.freeze()
    if endpoints is not None:
        endpoints.mark_warm()
    return Runtime(settings, storage, ledger, engine, processor, batcher, heartbeat, leases, metrics, endpoints,
                   sweeper)


# CPU workers: at most 8 children (several workers may share a host and the model needs cores).
# GPU workers: the device needs the children's decoding, not the cores: one per usable core but
# the worker's own, up to 32. On the H200 host a DataLoader read 16,606 crops/s with 8 processes
# and 23,951 with 16 (issue 24); the IR-SE-64 target there is 30,000/s.
MAX_DEFAULT_DECODE_PROCESSES = {"cpu": 8, "cuda": 32}


def default_decode_processes(device: str, cores: int) -> int:
    if cores <= 1:
        return 0  # on a single core children would only add hand-overs
    if device.startswith("cuda"):
        return min(cores - 1, MAX_DEFAULT_DECODE_PROCESSES["cuda"])
    return min(cores, MAX_DEFAULT_DECODE_PROCESSES["cpu"])


def start_crop_pool(settings: Settings) -> CropPool | None:
    """Children that read crop mode's local items (``FACEQ_DECODE_PROCESSES``, else
    ``default_decode_processes``), started before the worker takes its first task."""
    processes = settings.decode_processes
    if processes is None:
        processes = default_decode_processes(settings.device, usable_cores())
    if not processes or "crop" not in settings.modes:
        return None
    pool = CropPool(processes, settings.max_image_bytes, settings.max_image_pixels, settings.chunk_size)
    try:
        pool.start()
    except Exception:  # slower without them, but the worker still works
        log.exception("the decoding processes did not start: crop mode's local items are read in threads")
        pool.close()
        return None
    log.info("crop mode's local items are read by %d decoding process(es)", processes)
    return pool


def shutdown_runtime() -> None:
    """Stop the heartbeat (the worker vanishes from the health list at once) and the threads."""
    global _runtime
    with _lock:
        if _runtime is not None:
            if _runtime.endpoints is not None:
                _runtime.endpoints.close()
            _runtime.heartbeat.stop()
            _runtime.leases.stop()
            if _runtime.sweeper is not None:
                _runtime.sweeper.stop()
            if _runtime.batcher is not None:
                _runtime.batcher.close()
            _runtime.processor.close()
            _runtime = None


def get_runtime(worker_name: str | None = None) -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(Settings.from_env(), worker_name)
        return _runtime
