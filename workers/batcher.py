"""Cross-task micro-batching in front of the engine, in the style of Triton's dynamic batcher.

Task threads ``submit`` the crops of their chunk (any number, from one image up); one loop
thread owns the device and forms batches of up to ``max_batch`` crops, waiting at most
``max_delay`` after the oldest waiting crop arrived for more to come. A 256-crop chunk fills
batches on its own; one-image jobs from many task threads share batches. Each result row
goes back to the request it came from, in order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from faceq.workers.metrics import NULL_METRICS, NullMetrics

log = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Request:
    crops: np.ndarray
    future: Future
    embeddings: np.ndarray
    quality: np.ndarray
    arrived: float = field(default_factory=time.monotonic)
    taken: int = 0  # crops handed to batches so far
    done: int = 0  # crops with results

    @property
    def remaining(self) -> int:
        return len(self.crops) - self.taken


@dataclass
class BatcherStats:
    """Counters for the health heartbeat (images/s) and the benchmark (batch sizes)."""

    images: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=512))  # (finished_at, n_images)

    def images_per_second(self, window: float = 60.0) -> float:
        now = time.monotonic()
        total = sum(n for t, n in list(self.recent) if now - t <= window)
        return total / window


class MicroBatcher:
    def __init__(self, run_batch: RunBatch, max_batch: int, max_delay_ms: float, name: str = "faceq-batcher",
                 metrics: NullMetrics | None = None):
        self.run_batch = run_batch
        self.metrics = metrics or NULL_METRICS  # faceq.workers.metrics: batch sizes, device seconds, queue delay
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self.stats = BatcherStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, crops: np.ndarray) -> Future:
        """Queue (N, 112, 112, 3) uint8 crops; the future gives (embeddings, quality) for them."""
        return self._submit(crops).future

    def _submit(self, crops: np.ndarray) -> _Request:
        request = _Request(crops, Future(), np.empty((len(crops), 512), np.float32), np.empty(len(crops), np.float32))
        if len(crops) == 0:
            request.future.set_result((request.embeddings, request.quality))
        else:
            self._queue.put(request)
        return request

    def infer(self, crops: np.ndarray, on_progress: Callable[[int], None] | None = None,
              every: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, quality) of ``crops``. ``on_progress(n)``: called from the caller's thread
        at most every ``every`` seconds while it waits, with how many crops have results so far
        (the loop thread that owns the device never waits on it)."""
        request = self._submit(crops)
        if on_progress is None:
            return request.future.result()
        reported = 0
        while True:
            try:
                return request.future.result(timeout=every)
            except FutureTimeout:
                if request.done != reported:
                    reported = request.done
                    on_progress(reported)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        pending: deque[_Request] = deque()  # requests with crops not yet handed to a batch
        while True:
            if not pending:
                request = self._queue.get()
                if request is None:
                    return
                pending.append(request)
            # Like Triton's max queue delay: the oldest waiting crop bounds the wait, so the
            # tail of a large request never waits for company it has already waited for.
            deadline = pending[0].arrived + self.max_delay
            while sum(r.remaining for r in pending) < self.max_batch:
                try:
                    request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if request is None:
                    self._queue.put(None)  # finish what is pending, then stop
                    break
                pending.append(request)
            self._run(self._take(pending))

    def _take(self, pending: deque[_Request]) -> list[tuple[_Request, int, int]]:
        """Up to ``max_batch`` crops from the oldest requests: (request, start, count) segments."""
        segments, room = [], self.max_batch
        while pending and room:
            request = pending[0]
            if request.future.done():  # an earlier part of it failed: drop the rest
                pending.popleft()
                continue
            count = min(request.remaining, room)
            segments.append((request, request.taken, count))
            request.taken += count
            room -= count
            if request.remaining == 0:
                pending.popleft()
        return segments

    def _run(self, segments: list[tuple[_Request, int, int]]) -> None:
        parts = [r.crops[start : start + n] for r, start, n in segments]
        crops = parts[0] if len(parts) == 1 else np.concatenate(parts)  # a chunk's own batch: no copy
        started = time.monotonic()
        try:
            embeddings, quality = self.run_batch(crops)
        except BaseException as exc:  # the requests fail; the loop (and the worker) carry on
            log.error("batch of %d failed: %s", len(crops), exc)
            for request, _, _ in segments:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        finished = time.monotonic()
        self.stats.images += len(crops)
        self.stats.batches += 1
        self.stats.busy_seconds += finished - started
        self.stats.recent.append((finished, len(crops)))
        self.metrics.observe_batch(len(crops), finished - started, [started - r.arrived for r, _, _ in segments])
        offset = 0
        for request, start, n in segments:
            request.embeddings[start : start + n] = embeddings[offset : offset + n]
            request.quality[start : start + n] = quality[offset : offset + n]
            offset += n
            request.done += n
            if request.done == len(request.crops) and not request.future.done():
                request.future.set_result((request.embeddings, request.quality))
