"""A bound on decoded pixels in flight, so concurrent decodes cannot exhaust a worker's memory.

Every fetch/decode thread asks for an image's pixel count before decoding it and gives it back
when the face crops are made. Sixteen 7000×7000 PNGs (47 KB each on disk, 147 MB each decoded)
then decode a few at a time instead of all at once.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class PixelBudget:
    def __init__(self, pixels: int):
        self.capacity = pixels
        self._available = pixels
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Wait until ``pixels`` fit (an image larger than the whole budget waits for all of it)."""
        want = min(pixels, self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self._available >= want)
            self._available -= want
        try:
            yield
        finally:
            with self._cond:
                self._available += want
                self._cond.notify_all()

    @property
    def available(self) -> int:
        with self._cond:
            return self._available
