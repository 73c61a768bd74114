"""How far a running chunk is, told to the ledger by a ticker thread (issue 26).

Reading threads and the model's results only move counters here, never Redis: a ticker sends
the chunk's count at most once every ``every`` seconds, and only when it moved, so a chunk
costs at most ~2 round trips a second however fast its items finish. The count is a running
figure only: recording the chunk counts it whole and drops it (``Ledger.record_chunk``), and
a report that arrives after that is ignored, so each item is counted exactly once at the end.
"""

from __future__ import annotations

import bisect
import threading
from typing import Callable

import numpy as np

DEFAULT_EVERY = 0.5  # seconds between reports of one chunk: ≤ 2 Redis round trips a second
MODEL_SLICE = 64  # crops per engine call without a micro-batcher, when the engine names no max_batch


class ChunkProgress:
    """Items of one chunk with their results so far: those that ended before the model (an
    error, no face) as they end, the others as the model's results come back."""

    def __init__(self, send: Callable[[int], None] | None = None, every: float = DEFAULT_EVERY):
        self._send = send
        self.every = every
        self._lock = threading.Lock()
        self._settled = 0  # items whose row needs no model
        self._modelled = 0  # items all of whose faces have model results
        self._as_items: Callable[[int], int] = lambda n: n
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @property
    def done(self) -> int:
        with self._lock:
            return self._as_items(self._settled + self._modelled)

    def count_as(self, as_items: Callable[[int], int]) -> None:
        """Counted units are not the chunk's items (compare: photos of its pairs): how to convert."""
        self._as_items = as_items

    def settled(self, n: int = 1) -> None:
        """``n`` more items ended without the model (called from reading threads)."""
        with self._lock:
            self._settled += n

    def settled_total(self, n: int) -> None:
        """All items that end without the model, once reading is over (paths that did not count
        them one by one are caught up; the ones that did are not counted twice)."""
        with self._lock:
            self._settled = max(self._settled, n)

    def faces_done(self, last_face_of_items: list[int]) -> Callable[[int], None]:
        """A listener for "``k`` faces have results" (faces in model order): an item is done when
        its last face is. ``last_face_of_items``: sorted position of each item's last face."""

        def listen(faces: int) -> None:
            items = bisect.bisect_left(last_face_of_items, faces)
            with self._lock:
                self._modelled = max(self._modelled, items)

        return listen

    def __enter__(self) -> "ChunkProgress":
        if self._send is not None:
            self._ticker = threading.Thread(target=self._tick, name="faceq-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        # a report still in flight may land after the chunk is recorded: the ledger ignores it
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=self.every)

    def _tick(self) -> None:
        sent = 0
        while not self._stop.wait(self.every):
            done = self.done
            if done != sent and not self._stop.is_set():
                self._send(done)
                sent = done


def infer_in_slices(infer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], crops: np.ndarray, step: int,
                    on_faces: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    """``infer`` on ``crops`` a slice of ``step`` at a time (the engine's own batch size, so the
    device does the same work), telling ``on_faces`` after each: without a micro-batcher a
    chunk's model results would otherwise all come back at once."""
    if len(crops) <= step:
        result = infer(crops)
        on_faces(len(crops))
        return result
    parts = []
    for start in range(0, len(crops), step):
        parts.append(infer(crops[start:start + step]))
        on_faces(min(start + step, len(crops)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
