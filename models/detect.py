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


ENGINES = ("opencv", "onnxruntime")
YUNET_OUTPUTS = {f"{head}_{stride}" for head in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)}
ONNXRUNTIME_HELP = ("FACEQ_DETECT_ENGINE=onnxruntime needs the onnxruntime package (in faceq[worker]: "
                    "pip install onnxruntime), or FACEQ_DETECT_ENGINE=opencv")


class FaceDetector:
    """YuNet, searched at reduced size; the network runs in OpenCV's DNN or in ONNX Runtime.

    ``engine="opencv"`` is ``cv2.FaceDetectorYN`` (one instance per thread: instances keep
    per-size state). ``engine="onnxruntime"`` runs the same ONNX file in ONNX Runtime (about 1.6×
    less CPU per search, bench/RESULTS.md) and post-processes its outputs as OpenCV does
    (models/yunet_decode.py): the same faces, landmarks within 1e-3 px (tests/test_detect_engines.py).
    """

    def __init__(self, weights: str, score_threshold: float = 0.7, nms_threshold: float = 0.3, max_side: int = 1280,
                 engine: str = "opencv", threads: int = 0):
        if not Path(weights).is_file():
            raise ModelError(f"FACEQ_DETECTOR_WEIGHTS={weights}: no such file. {YUNET_HELP}")
        if engine not in ENGINES:
            raise ModelError(f"FACEQ_DETECT_ENGINE={engine!r}: expected one of {', '.join(ENGINES)}")
        self.weights = weights
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self.engine = engine
        self.threads = threads  # ONNX Runtime's intra-op threads per search (0: its default, one per core)
        self._local = threading.local()
        self._session = _onnx_session(weights, threads) if engine == "onnxruntime" else None
        if self._session is None:
            self._probe(self._create())  # fail now, at worker start, if OpenCV cannot read or run the file

    def like(self, score_threshold: float | None = None, max_side: int | None = None) -> "FaceDetector":
        """A detector on the same weights and engine with another threshold or search size."""
        return FaceDetector(self.weights, self.score_threshold if score_threshold is None else score_threshold,
                            self.nms_threshold, self.max_side if max_side is None else max_side, self.engine,
                            self.threads)

    def _create(self):
        try:
            return cv2.FaceDetectorYN.create(self.weights, "", (320, 320), self.score_threshold, self.nms_threshold, 5000)
        except cv2.error as exc:
            raise ModelError(f"FACEQ_DETECTOR_WEIGHTS={self.weights} is not a YuNet model OpenCV can load: {exc}") from None

    def _probe(self, detector) -> None:
        """One search of a small black image: OpenCV loads any ONNX network; another one fails here
        (its outputs are not YuNet's), not as an error row per photo."""
        detector.setInputSize((32, 32))
        try:
            detector.detect(np.zeros((32, 32, 3), np.uint8))
        except cv2.error as exc:
            reason = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise ModelError(f"FACEQ_DETECTOR_WEIGHTS={self.weights} is not a YuNet model OpenCV can run: "
                             f"{reason}") from None

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Every face YuNet finds, in the coordinates of ``image_bgr``.

        Images larger than ``max_side`` are searched at reduced size (faces in them are
        large enough), and boxes and landmarks are scaled back.
        """
        height, width = image_bgr.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        search = image_bgr if scale == 1.0 else cv2.resize(
            image_bgr, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
        )
        faces = self._search_onnxruntime(search) if self._session is not None else self._search_opencv(search)
        detections = []
        for face in faces / np.array([scale] * 14 + [1.0], dtype=np.float32):
            x, y, w, h = face[:4]
            detections.append(Detection(np.array([x, y, x + w, y + h]), face[4:14].reshape(5, 2), float(face[14])))
        return detections

    def _search_opencv(self, search: np.ndarray) -> np.ndarray:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = self._create()
        detector.setInputSize((search.shape[1], search.shape[0]))
        _, faces = detector.detect(search)
        return np.zeros((0, 15), np.float32) if faces is None else faces

    def _search_onnxruntime(self, search: np.ndarray) -> np.ndarray:
        """OpenCV's input (BGR as float, zero-padded bottom-right to a multiple of 32), its post-processing."""
        import torch

        from faceq.models.yunet_decode import faces_per_image
        from faceq.models.yunet_torch import DIVISOR

        height, width = search.shape[:2]
        pad_h, pad_w = (-(-height // DIVISOR) * DIVISOR, -(-width // DIVISOR) * DIVISOR)
        blob = np.zeros((1, 3, pad_h, pad_w), np.float32)
        blob[0, :, :height, :width] = search.transpose(2, 0, 1)
        names = [output.name for output in self._session.get_outputs()]
        values = self._session.run(names, {self._session.get_inputs()[0].name: blob})
        outputs: dict[str, list] = {}
        by_stride = sorted(zip(names, values), key=lambda named: int(named[0].split("_")[1]))  # cls_8, cls_16, …
        for name, value in by_stride:
            outputs.setdefault(name.split("_")[0], []).append(torch.from_numpy(value))
        with torch.inference_mode():
            faces = faces_per_image(outputs, pad_h, pad_w, self.score_threshold, self.nms_threshold)[0]
        return faces.numpy()


def _onnx_session(weights: str, threads: int):
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(ONNXRUNTIME_HELP) from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are not the operator's concern
    try:
        session = onnxruntime.InferenceSession(weights, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"FACEQ_DETECTOR_WEIGHTS={weights} is not a YuNet model ONNX Runtime can load: "
                         f"{str(exc).splitlines()[0]}") from None
    missing = YUNET_OUTPUTS - {output.name for output in session.get_outputs()}
    if missing:  # another network: say so at worker start, not as an error row per photo
        raise ModelError(f"FACEQ_DETECTOR_WEIGHTS={weights} is not YuNet 2023mar: no outputs {', '.join(sorted(missing))}")
    return session
