"""Worker health: a heartbeat key in Redis that says what the worker runs and how fast.

The key (``faceq.queue.heartbeats``) holds JSON (device, precision, batch settings, warm memory,
model id, images/s over the last minute, totals) and expires when the worker stops
refreshing it, so a dead worker disappears. ``python -m faceq.producer workers`` lists them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import redis

from faceq.queue.heartbeats import heartbeat_key
from faceq.redact import redact_url
from faceq.storage.store import canonical_storage_url
from faceq.settings import Settings
from faceq.workers.batcher import MicroBatcher
from faceq.workers.engine import Engine

log = logging.getLogger(__name__)

INTERVAL_SECONDS = float(os.environ.get("FACEQ_HEARTBEAT_SECONDS") or 5.0)


class Heartbeat:
    def __init__(self, client: redis.Redis, worker: str, settings: Settings, engine: Engine,
                 batcher: MicroBatcher | None):
        self.client = client
        self.worker = worker
        self.settings = settings
        self.engine = engine
        self.batcher = batcher
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faceq-heartbeat", daemon=True)

    def status(self) -> dict:
        info = self.engine.info
        stats = self.batcher.stats if self.batcher else None
        return {
            "worker": self.worker,
            "device": info.device,
            "precision": info.precision,
            "max_batch": info.max_batch,
            "max_delay_ms": self.settings.max_delay_ms,
            "microbatch": self.batcher is not None,
            "modes": list(self.settings.modes),
            # producers check that they write where the workers read
            "storage": redact_url(canonical_storage_url(self.settings.storage_url)),
            "model_id": info.model_id,
            "random_weights": info.random_weights,
            "stand_in": info.stand_in,  # FACEQ_MODEL_ARCH=null: the zero-cost stand-in, not a model
            "warm_memory_bytes": info.warm_memory_bytes,
            "images_per_second": round(stats.images_per_second(), 2) if stats else None,
            "images_total": stats.images if stats else None,
            "batches_total": stats.batches if stats else None,
            "started_at": self.started_at,
            "updated_at": time.time(),
        }

    def beat(self) -> None:
        self.client.set(heartbeat_key(self.worker), json.dumps(self.status()), ex=int(3 * INTERVAL_SECONDS))

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.client.delete(heartbeat_key(self.worker))

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            try:
                self.beat()
            except redis.RedisError as exc:  # the broker is down: Celery will say so too
                log.warning("heartbeat not written: %s", exc)
