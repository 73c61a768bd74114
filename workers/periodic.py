"""A daemon thread that does one thing every ``interval`` seconds until stopped."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Periodic:
    """Subclasses define ``tick``; an error of ``tolerated`` is logged and the next tick tries again
    (the broker or storage is down: nothing this thread does is urgent enough to stop a worker)."""

    tolerated: tuple[type[BaseException], ...] = (Exception,)
    what = "periodic work"

    def __init__(self, interval: float, name: str):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except self.tolerated as exc:
                log.warning("%s skipped this round: %s", self.what, exc)
