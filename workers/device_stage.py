"""Detect mode's items through the device path (``FACEQ_DETECT_DEVICE``): read, then batched on the device.

The worker's CPU then only reads files and keeps the books: each item's bytes are read in I/O
threads, and the chunk's photos go through models/device_detect_path.py in batches of
``batch_photos`` (their decoded pixels, and the float search images, live on the device). A
photo the device path cannot take is prepared by the worker's CPU path. Thread CPU per stage
goes to the worker's ``faceq_stage_cpu_seconds_total`` (fetch, decode, detect; alignment counts
as detect, as on the CPU path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from faceq.storage.allow import AllowedSources
from faceq.errors import BadInputError, StorageError
from faceq.job.spec import Item
from faceq.settings import Settings
from faceq.storage.store import Storage
from faceq.models.detect import FaceDetector
from faceq.models.device_detect_path import DeviceDetectPath, Outcome, build_device_detect_path
from faceq.models.preprocess import decode_image, detect_faces
from faceq.workers.engine import resolve_device
from faceq.workers.stage_cpu import StageCPU, clock

log = logging.getLogger(__name__)


class DeviceDetectStage:
    def __init__(self, path: DeviceDetectPath, storage: Storage, settings: Settings, cpu: StageCPU,
                 batch_photos: int = 64):
        self.path, self.storage, self.settings, self.cpu = path, storage, settings, cpu
        self.batch_photos = batch_photos
        self._io = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="faceq-device-io")

    def close(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)

    def prepare(self, items: list[Item], allowed: AllowedSources) -> list[Outcome]:
        """Every item prepared (faces with host pixels, as ``detect_faces`` gives them), or its error."""
        datas = self._read_all(items, allowed)
        outcomes: list[Outcome] = []
        for start in range(0, len(datas), self.batch_photos):
            batch = self.path.run(datas[start:start + self.batch_photos])
            outcomes.extend(batch.to_host())
            self.cpu.add_many(decode=batch.cpu_seconds["decode"],
                              detect=batch.cpu_seconds["detect"] + batch.cpu_seconds["align"])
        return outcomes

    def _read_all(self, items: list[Item], allowed: AllowedSources) -> list[bytes | BadInputError]:
        futures = [self._io.submit(self._read, item, allowed) for item in items]
        wait(futures, timeout=self.settings.item_timeout_seconds)
        timeout = BadInputError("timeout", f"not read within {self.settings.item_timeout_seconds:.0f}s")
        results = []
        for future in futures:
            if not future.done():
                future.cancel()
                results.append(timeout)
            elif future.exception() is not None:  # a transient storage error: the chunk is retried later
                raise future.exception()
            else:
                results.append(future.result())
        return results

    def _read(self, item: Item, allowed: AllowedSources) -> bytes | BadInputError:
        started = clock()
        try:
            return self.storage.read_uri(allowed.check(item.source_uri), self.settings.max_image_bytes)
        except BadInputError as exc:
            return exc
        except StorageError as exc:
            if exc.transient:
                raise
            return BadInputError("unreadable", str(exc))
        finally:
            self.cpu.add("fetch", clock() - started)


def cpu_path(detector: FaceDetector, settings: Settings) -> Callable[[bytes], Outcome]:
    """The CPU path for one photo's bytes (decode, detect, align): the device path's fallback."""
    def prepare(data: bytes) -> Outcome:
        try:
            image = decode_image(data, settings.max_image_bytes, settings.max_image_pixels)
            return detect_faces(image, detector, settings.min_face)
        except BadInputError as exc:
            return exc
        except Exception as exc:  # a decoder bug on one file must not cost the chunk
            log.exception("unexpected error preparing a photo on the CPU path")
            return BadInputError("internal", f"{type(exc).__name__}: {exc}")
    return prepare


def build_device_stage(settings: Settings, storage: Storage, detector: FaceDetector, cpu: StageCPU
                       ) -> DeviceDetectStage | None:
    """The stage when ``FACEQ_DETECT_DEVICE`` names a device (and the worker serves detect mode)."""
    if not settings.detect_device or "detect" not in settings.modes or detector is None:
        return None
    device = str(resolve_device(settings.detect_device))  # a clear error for a device that is not there
    path = build_device_detect_path(settings.detector_weights, device, settings.max_image_bytes,
                                    settings.max_image_pixels, settings.detect_score, settings.detect_max_side,
                                    settings.min_face, cpu_fallback=cpu_path(detector, settings))
    return DeviceDetectStage(path, storage, settings, cpu)
