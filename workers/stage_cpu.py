"""CPU seconds a worker spends per data-path stage, summed over its threads.

``faceq_stage_cpu_seconds_total{stage}`` on the worker's ``/metrics`` (a counter family; stages:
fetch, decode, detect (detection + alignment), crop, rows (result building), write (Parquet
part + storage put), record (the ledger); detect mode's coarse path: coarse_resize,
coarse_detect, fine_detect, align). Each figure is thread CPU time
(``time.thread_time``), so a thread waiting on I/O or the GIL adds nothing: the sum of the
stages, the device's batch seconds and the process's CPU time tell how much of a worker's CPU
goes to the data path and how much to everything else (Celery, kombu, Redis, heartbeats):
``python -m bench pipeline`` reports that split per item.

Cheap on purpose (a clock read, about 0.3 µs, and an add to a list the thread owns): it is on
the per-item path.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client.core import CounterMetricFamily

# detect mode's coarse path (models/coarse_detect.py) reports its own four stages in place of detect
STAGES = ("fetch", "decode", "detect", "crop", "rows", "write", "record",
          "coarse_resize", "coarse_detect", "fine_detect", "align")
_INDEX = {name: k for k, name in enumerate(STAGES)}
clock = time.thread_time


class StageCPU:
    """Per-thread accumulators (no lock on the hot path), summed when read."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[list[float]] = []
        self._lock = threading.Lock()

    def _mine(self) -> list[float]:
        mine = getattr(self._local, "totals", None)
        if mine is None:
            mine = self._local.totals = [0.0] * len(STAGES)
            with self._lock:
                self._all.append(mine)
        return mine

    def add(self, stage: str, seconds: float) -> None:
        self._mine()[_INDEX[stage]] += seconds

    def add_many(self, **seconds: float) -> None:
        mine = self._mine()
        for stage, value in seconds.items():
            mine[_INDEX[stage]] += value

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = clock()
        try:
            yield
        finally:
            self.add(name, clock() - started)

    def totals(self) -> dict[str, float]:
        with self._lock:
            rows = list(self._all)
        return {name: sum(row[k] for row in rows) for k, name in enumerate(STAGES)}

    def collect(self):
        family = CounterMetricFamily("faceq_stage_cpu_seconds", "Thread CPU seconds per data-path stage "
                                     "(" + ", ".join(STAGES) + ")", labels=["stage"])
        for name, value in self.totals().items():
            family.add_metric([name], value)
        yield family
