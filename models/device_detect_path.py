"""Detect mode on the device: file bytes in, the engine's input batch and each photo's faces out.

decode (models/device_decode.py) → search resize and YuNet (models/device_detect.py) → the
reference's face choice (``usable_faces``) → alignment into one uint8 batch
(models/device_align.py), every step a torch op on ``device``; the CPU reads headers, runs the
suppression loop over a few dozen candidates and estimates each face's 2×3 transform. The
results are those of models/preprocess.py's ``detect_faces`` on the CPU-decoded photo (tested
to cos ≥ 0.9999 per face). A photo the device path cannot take is prepared by ``cpu_fallback``
(the worker's CPU path) instead, so no photo fails because of the device.

Runs on ``device="cpu"`` too (the tests, ``python -m bench gpu --device cpu``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from faceq.errors import BadInputError
from faceq.models.align import INPUT_SIZE
from faceq.models.detect import usable_faces
from faceq.models.device_align import align_into
from faceq.models.device_decode import PhotoDecoder
from faceq.models.device_detect import DeviceFaceDetector
from faceq.models.preprocess import FaceCrop, PreparedImage

log = logging.getLogger(__name__)

Outcome = PreparedImage | BadInputError
clock = time.thread_time  # CPU seconds of this thread, as workers/stage_cpu.py counts them


@dataclass
class DeviceBatch:
    """One batch of photos through the device path."""

    crops: torch.Tensor  # (faces, 112, 112, 3) uint8 BGR on the device: each photo's usable faces, largest first
    outcomes: list[Outcome]  # per photo; device faces' FaceCrop.pixels are None: ``to_host`` fills them
    rows: list[range]  # per photo: its faces' rows of ``crops`` (empty for an error or a CPU fallback)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # decode, detect (search + YuNet), align

    def to_host(self) -> list[Outcome]:
        """The outcomes with each face's pixels copied to the host, in one transfer."""
        host = self.crops.cpu().numpy()
        return [PreparedImage([FaceCrop(host[row], face.bbox, face.landmarks)
                               for row, face in zip(rows, outcome.faces)], outcome.face_count)
                if isinstance(outcome, PreparedImage) and len(rows) else outcome
                for outcome, rows in zip(self.outcomes, self.rows)]


class DeviceDetectPath:
    def __init__(self, detector: DeviceFaceDetector, decoder: PhotoDecoder, min_face: float = 10,
                 cpu_fallback: Callable[[bytes], Outcome] | None = None):
        self.detector, self.decoder, self.min_face = detector, decoder, min_face
        self.cpu_fallback = cpu_fallback
        self.device = detector.device

    def run(self, datas: list[bytes | BadInputError]) -> DeviceBatch:
        """``datas``: file bytes per photo, or the error its read gave (kept as its outcome)."""
        seconds = {"decode": 0.0, "detect": 0.0, "align": 0.0}
        started = clock()
        readable = [i for i, d in enumerate(datas) if isinstance(d, bytes)]
        outcomes: list[Outcome] = [d if isinstance(d, BadInputError) else None for d in datas]
        photos = dict(zip(readable, self.decoder.decode([datas[i] for i in readable])))
        for i, photo in photos.items():
            if isinstance(photo, BadInputError):
                outcomes[i] = photo
        decoded = [i for i, photo in photos.items() if isinstance(photo, torch.Tensor)]
        seconds["decode"] = clock() - started
        try:
            faces = dict(zip(decoded, self.detector.detect([photos[i] for i in decoded])))
        except Exception:  # the device path broke on this batch: the CPU path takes every photo
            log.exception("device detection failed on a batch of %d photos; preparing them on the CPU", len(decoded))
            faces = {}
        detected = clock()
        seconds["detect"] = detected - started - seconds["decode"]
        chosen = {i: usable_faces(found, self.min_face) for i, found in faces.items()}
        crops = torch.empty((sum(map(len, chosen.values())), INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8,
                            device=self.device)
        rows: list[range] = [range(0)] * len(datas)
        next_row = 0
        for i, found in chosen.items():
            rows[i] = range(next_row, next_row + len(found))
            if found:
                align_into(photos[i], np.stack([f.landmarks for f in found]), crops[rows[i].start:rows[i].stop])
            outcomes[i] = PreparedImage([FaceCrop(None, f.bbox.tolist(), f.landmarks.reshape(-1).tolist())
                                         for f in found], face_count=len(found))
            next_row += len(found)
        seconds["align"] = clock() - detected
        for i in range(len(datas)):
            if outcomes[i] is None:  # decoded but not detected (the batch broke): the CPU path
                outcomes[i] = self._on_cpu(datas[i])
        return DeviceBatch(crops, outcomes, rows, seconds)

    def _on_cpu(self, data: bytes) -> Outcome:
        if self.cpu_fallback is None:
            return BadInputError("internal", "the device path failed on this photo and no CPU path is configured")
        return self.cpu_fallback(data)


def build_device_detect_path(weights: str, device: str, max_bytes: int, max_pixels: int, score_threshold: float,
                             max_side: int, min_face: float,
                             cpu_fallback: Callable[[bytes], Outcome] | None = None) -> DeviceDetectPath:
    """The path with the best decoder ``device`` has (nvJPEG, nvImageCodec, else the CPU's)."""
    detector = DeviceFaceDetector(weights, device, score_threshold, max_side=max_side)
    decoder = PhotoDecoder(device, max_bytes, max_pixels)
    log.info("detect mode on %s: JPEG decoding by %s, YuNet in PyTorch", device, decoder.name)
    return DeviceDetectPath(detector, decoder, min_face, cpu_fallback)
