"""Face detection with YuNet (OpenCV's ``FaceDetectorYN``) and the reference's face choice.

YuNet gives, per face, a box (x, y, w, h), five landmarks (the subject's right eye, left
eye, nose tip, right and left mouth corner — in image order: left eye first, matching the
ArcFace template) and a score. The weights file is not shipped with faceq: get
``face_detection_yunet_2023mar.onnx`` from OpenCV Zoo and set ``FACEQ_DETECTOR_WEIGHTS``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from faceq.errors import ModelError

YUNET_HELP = (
    "detect mode needs the YuNet face detector: run `faceq models fetch --only detector` on this host (workers find "
    "it without variables), or download face_detection_yunet_2023mar.onnx from OpenCV Zoo "
    "(https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet) and set "
    "FACEQ_DETECTOR_WEIGHTS=/path/to/face_detection_yunet_2023mar.onnx; a worker meant to serve crop mode only "
    "starts with FACEQ_MODES=crop"
)


@dataclass(frozen=True)
class Detection:
    bbox: np.ndarray  # x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2)
    score: float

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])


def usable_faces(detections: list[Detection], min_size: float = 10) -> list[Detection]:
    """Faces at least ``min_size`` px wide and high, largest first (the reference's rule)."""
    big_enough = [d for d in detections if d.width >= min_size and d.height >= min_size]
    return sorted(big_enough, key=lambda d: d.width * d.height, reverse=True)


class FaceDetector:
    """YuNet, one OpenCV instance per thread (instances keep per-size state)."""

    def __init__(self, weights: str, score_threshold: float = 0.7, nms_threshold: float = 0.3, max_side: int = 1280):
        if not Path(weights).is_file():
            raise ModelError(f"FACEQ_DETECTOR_WEIGHTS={weights}: no such file. {YUNET_HELP}")
        self.weights = weights
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self._local = threading.local()
        self._create()  # fail now, at worker start, if OpenCV cannot read the file

    def _create(self):
        try:
            return cv2.FaceDetectorYN.create(self.weights, "", (320, 320), self.score_threshold, self.nms_threshold, 5000)
        except cv2.error as exc:
            raise ModelError(f"FACEQ_DETECTOR_WEIGHTS={self.weights} is not a YuNet model OpenCV can load: {exc}") from None

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Every face YuNet finds, in the coordinates of ``image_bgr``.

        Images larger than ``max_side`` are searched at reduced size (faces in them are
        large enough), and boxes and landmarks are scaled back.
        """
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = self._create()
        height, width = image_bgr.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        search = image_bgr if scale == 1.0 else cv2.resize(
            image_bgr, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
        )
        detector.setInputSize((search.shape[1], search.shape[0]))
        _, faces = detector.detect(search)
        if faces is None:
            return []
        detections = []
        for face in faces / np.array([scale] * 14 + [1.0], dtype=np.float32):
            x, y, w, h = face[:4]
            detections.append(Detection(np.array([x, y, x + w, y + h]), face[4:14].reshape(5, 2), float(face[14])))
        return detections
