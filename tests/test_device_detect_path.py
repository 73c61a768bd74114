"""A whole detect batch through the device path (on the CPU here) against the CPU path, face by face."""

import cv2
import numpy as np
import pytest

from bench.precision import randomise_batchnorm
from faceq.errors import BadInputError
from faceq.models.detect import FaceDetector
from faceq.models.device_decode import PhotoDecoder
from faceq.models.device_detect import DeviceFaceDetector
from faceq.models.device_detect_path import DeviceDetectPath, build_device_detect_path
from faceq.models.preprocess import PreparedImage, decode_image, detect_faces
from faceq.models.weights import LoadedModel, load_model
from tests.conftest import YUNET, needs_yunet
from tests.parity_photos import parity_photos
from tests.photos import cat_bgr
from faceq.workers.engine import Engine

pytestmark = needs_yunet
LIMITS = {"max_bytes": 1 << 26, "max_pixels": 1 << 26}


def _photos() -> dict[str, bytes]:
    files = {f"{name}.jpg": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
             for name, image in parity_photos().items()}
    files["astronaut.png"] = cv2.imencode(".png", parity_photos()["astronaut"])[1].tobytes()  # the CPU decodes it
    files["cat.jpg"] = cv2.imencode(".jpg", cat_bgr())[1].tobytes()  # no face
    files["empty.jpg"] = b""  # an error row, as on the CPU path
    return files


@pytest.fixture(scope="module")
def cpu_detector() -> FaceDetector:
    return FaceDetector(str(YUNET))


def _cpu_path(detector: FaceDetector):
    def prepare(data: bytes):
        try:
            return detect_faces(decode_image(data, **LIMITS), detector)
        except BadInputError as exc:
            return exc
    return prepare


@pytest.fixture(scope="module")
def engine() -> Engine:
    model = randomise_batchnorm(load_model(None, "ir_se_64", seed=123).model, seed=7)
    return Engine(LoadedModel(model, "device-path", random_weights=True), "cpu", "fp32", max_batch=16)


def test_a_detect_batch_gives_the_cpu_paths_faces_and_embeddings(cpu_detector, engine):
    files = _photos()
    path = build_device_detect_path(str(YUNET), "cpu", **LIMITS, score_threshold=0.7, max_side=1280, min_face=10,
                                    cpu_fallback=_cpu_path(cpu_detector))
    batch = path.run(list(files.values()))
    assert batch.crops.shape == (sum(len(r) for r in batch.rows), 112, 112, 3)
    assert set(batch.cpu_seconds) == {"decode", "detect", "align"}
    ours = batch.to_host()
    mine_crops, their_crops = [], []
    for (name, data), mine in zip(files.items(), ours):
        theirs = _cpu_path(cpu_detector)(data)
        if isinstance(theirs, BadInputError):
            assert isinstance(mine, BadInputError) and mine.code == theirs.code, name
            continue
        assert isinstance(mine, PreparedImage) and mine.face_count == theirs.face_count, name
        for a, b in zip(mine.faces, theirs.faces):
            assert np.abs(np.subtract(a.bbox, b.bbox)).max() <= 0.5, name
            assert np.abs(np.subtract(a.landmarks, b.landmarks)).max() <= 0.5, name
            mine_crops.append(a.pixels)
            their_crops.append(b.pixels)
    mine_e, _ = engine.infer(np.stack(mine_crops))
    theirs_e, _ = engine.infer(np.stack(their_crops))
    cosines = (mine_e * theirs_e).sum(axis=1)
    assert len(cosines) == 10 and cosines.min() >= 0.9999, cosines
    assert ours[list(files).index("cat.jpg")].face_count == 0


class BrokenDetector(DeviceFaceDetector):
    def detect(self, photos):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_broken_device_batch_falls_back_to_the_cpu_path_per_photo(cpu_detector):
    files = _photos()
    path = DeviceDetectPath(BrokenDetector(str(YUNET), "cpu"), PhotoDecoder("cpu", **LIMITS), 10,
                            cpu_fallback=_cpu_path(cpu_detector))
    outcomes = path.run(list(files.values())).to_host()
    for (name, data), outcome in zip(files.items(), outcomes):
        reference = _cpu_path(cpu_detector)(data)
        assert type(outcome) is type(reference), name
        if isinstance(reference, PreparedImage):
            assert outcome.face_count == reference.face_count, name
            assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(outcome.faces, reference.faces)), name


def test_read_errors_stay_the_photos_outcome(cpu_detector):
    error = BadInputError("unreadable", "no such object")
    path = DeviceDetectPath(DeviceFaceDetector(str(YUNET), "cpu"), PhotoDecoder("cpu", **LIMITS), 10)
    batch = path.run([error, _photos()["astronaut.jpg"]])
    assert batch.outcomes[0] is error and batch.outcomes[1].face_count == 1 and list(batch.rows[1]) == [0]
