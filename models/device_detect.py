"""Face detection on the device: models/detect.py's ``FaceDetector``, batched, as torch ops.

The same search as the CPU detector: a photo larger than ``max_side`` is reduced with
INTER_AREA to ``round(side · scale)`` (models/area_resize.py), padded bottom-right with zeros to
a multiple of 32, run through YuNet (models/yunet_torch.py) and post-processed as OpenCV does
(models/yunet_decode.py); boxes and landmarks are scaled back in float32 as ``FaceDetector``
does. Photos whose padded search sizes agree run as one batch: the zero padding then is exactly
OpenCV's, so a face's numbers do not depend on its batch-mates (a photo padded further than its
own multiple of 32 would see zeros where OpenCV's convolutions see their own padding).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from faceq.models.area_resize import resize_area
from faceq.models.detect import Detection
from faceq.models.yunet_decode import faces_per_image
from faceq.models.yunet_torch import DIVISOR, load_yunet


def search_size(height: int, width: int, max_side: int) -> tuple[float, int, int]:
    """(scale, search height, search width), as ``FaceDetector.detect`` computes them."""
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return scale, height, width
    return scale, round(height * scale), round(width * scale)


def padded(side: int) -> int:
    return ((side - 1) // DIVISOR + 1) * DIVISOR


class DeviceFaceDetector:
    """YuNet on ``device`` for batches of photos ((3, H, W) uint8 BGR tensors on that device)."""

    def __init__(self, weights: str, device: torch.device | str = "cpu", score_threshold: float = 0.7,
                 nms_threshold: float = 0.3, max_side: int = 1280, top_k: int = 5000, max_batch: int = 32,
                 tf32: bool = False):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not tf32:
            # cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa); landmarks must match
            # OpenCV's fp32 ones. Process-wide: it also affects an fp32 engine (bf16, the GPU default, not)
            torch.backends.cudnn.allow_tf32 = False
        self.network = load_yunet(weights).to(self.device)
        self.score_threshold, self.nms_threshold, self.top_k = score_threshold, nms_threshold, top_k
        self.max_side = max_side
        self.max_batch = max_batch  # photos per network call (the search images' float copies bound it)

    def detect(self, photos: list[torch.Tensor]) -> list[list[Detection]]:
        """Every face YuNet finds in each photo, in that photo's pixels (``FaceDetector.detect``'s result)."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        searches = [search_size(p.shape[-2], p.shape[-1], self.max_side) for p in photos]
        for i, (_, height, width) in enumerate(searches):
            groups[(padded(height), padded(width))].append(i)
        found: list[list[Detection]] = [[] for _ in photos]
        for (pad_h, pad_w), members in groups.items():
            for start in range(0, len(members), self.max_batch):
                batch = members[start:start + self.max_batch]
                faces = self._search(photos, searches, batch, pad_h, pad_w)
                for i, rows in zip(batch, faces):
                    found[i] = _detections(rows.cpu().numpy(), searches[i][0])
        return found

    @torch.inference_mode()
    def _search(self, photos, searches, batch: list[int], pad_h: int, pad_w: int) -> list[torch.Tensor]:
        canvas = torch.zeros((len(batch), 3, pad_h, pad_w), dtype=torch.float32, device=self.device)
        for row, i in enumerate(batch):
            _, height, width = searches[i]
            canvas[row, :, :height, :width] = resize_area(photos[i][None], height, width)[0]
        outputs = self.network(canvas)
        return faces_per_image(outputs, pad_h, pad_w, self.score_threshold, self.nms_threshold, self.top_k)


def _detections(faces: np.ndarray, scale: float) -> list[Detection]:
    """OpenCV-layout rows (F, 15) in the search image → detections in the photo's pixels."""
    detections = []
    for face in faces / np.array([scale] * 14 + [1.0], dtype=np.float32):
        x, y, w, h = face[:4]
        detections.append(Detection(np.array([x, y, x + w, y + h]), face[4:14].reshape(5, 2), float(face[14])))
    return detections
