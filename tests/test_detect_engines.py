"""YuNet's two engines (models/detect.py): ONNX Runtime, the worker's default, against OpenCV's
``FaceDetectorYN`` on real photos — the same faces, boxes and landmarks to float rounding, the same
aligned crops to cos 0.9999 of the embedding — and what goes wrong said in one line."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from faceq.errors import ConfigError, ModelError
from faceq.models.detect import FaceDetector
from faceq.models.preprocess import detect_faces
from faceq.models.weights import LoadedModel, load_model
from faceq.settings import Settings
from faceq.workers.engine import Engine
from tests.conftest import YUNET, needs_yunet, not_yunet_onnx
from tests.parity_photos import large_photo_bgr, parity_photos
from tests.photos import cat_bgr


@pytest.fixture(scope="module")
def engines() -> tuple[FaceDetector, FaceDetector]:
    if not YUNET.is_file():
        pytest.skip(f"YuNet weights not found at {YUNET}")
    return FaceDetector(str(YUNET)), FaceDetector(str(YUNET), engine="onnxruntime")


PHOTOS = {**parity_photos(), "large-1920x2400": large_photo_bgr(), "cat": cat_bgr()}


@needs_yunet
@pytest.mark.parametrize("name", list(PHOTOS))
def test_onnxruntime_finds_what_opencv_finds(engines, name):
    """Measured: boxes and landmarks within 2.5e-4 px (the 1920×2400 photo, mapped back from its
    search), scores within 2e-7."""
    opencv, onnxruntime = engines
    expected, found = opencv.detect(PHOTOS[name]), onnxruntime.detect(PHOTOS[name])
    assert len(found) == len(expected)
    for a, b in zip(expected, found):
        np.testing.assert_allclose(b.bbox, a.bbox, atol=1e-3)
        np.testing.assert_allclose(b.landmarks, a.landmarks, atol=1e-3)
        assert abs(a.score - b.score) < 1e-5


@needs_yunet
def test_the_crops_embed_the_same(engines):
    opencv, onnxruntime = engines
    model = load_model(None, "ir_se_64", seed=123).model
    engine = Engine(LoadedModel(model, "parity", random_weights=True), "cpu", "fp32", max_batch=8)
    for name in ("astronaut", "tiled", "large-1920x2400"):
        a, b = detect_faces(PHOTOS[name], opencv), detect_faces(PHOTOS[name], onnxruntime)
        assert a.face_count == b.face_count >= 1
        ea, _ = engine.infer(np.stack([f.pixels for f in a.faces]))
        eb, _ = engine.infer(np.stack([f.pixels for f in b.faces]))
        assert float((ea * eb).sum(axis=1).min()) >= 0.9999


@needs_yunet
def test_one_session_serves_threads_side_by_side(engines):
    """The worker's FACEQ_IO_THREADS photos share one session: concurrent runs give serial results."""
    _, onnxruntime = engines
    names = ["astronaut", "grace_hopper", "tiled", "large-1920x2400"] * 3
    serial = {name: onnxruntime.detect(PHOTOS[name]) for name in set(names)}
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda name: onnxruntime.detect(PHOTOS[name]), names))
    for name, found in zip(names, together):
        assert [f.landmarks.tolist() for f in found] == [f.landmarks.tolist() for f in serial[name]]


@needs_yunet
def test_like_keeps_the_engine_and_changes_what_it_is_told(engines):
    _, onnxruntime = engines
    coarse = onnxruntime.like(score_threshold=0.1, max_side=1 << 30)
    assert (coarse.engine, coarse.threads, coarse.score_threshold, coarse.max_side) == (
        "onnxruntime", onnxruntime.threads, 0.1, 1 << 30)
    assert coarse.nms_threshold == onnxruntime.nms_threshold and coarse.weights == onnxruntime.weights


def test_an_unknown_engine_or_a_file_onnxruntime_cannot_load_is_one_line(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="FACEQ_DETECT_ENGINE='tensorrt': expected one of opencv, onnxruntime"):
        FaceDetector(str(bogus), engine="tensorrt")
    with pytest.raises(ModelError) as raised:
        FaceDetector(str(bogus), engine="onnxruntime")
    assert "is not a YuNet model ONNX Runtime can load" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_an_onnx_file_that_is_not_yunet_is_refused_at_load(tmp_path):
    """Another network loads in ONNX Runtime; it is refused at worker start, not per photo."""
    other = not_yunet_onnx(tmp_path)
    with pytest.raises(ModelError, match=r"other.onnx is not YuNet 2023mar: no outputs bbox_16, bbox_32, bbox_8, cls_16"):
        FaceDetector(str(other), engine="onnxruntime")


def test_the_worker_setting_defaults_to_onnxruntime_and_refuses_others(monkeypatch):
    monkeypatch.delenv("FACEQ_DETECT_ENGINE", raising=False)
    monkeypatch.delenv("FACEQ_DETECT_THREADS", raising=False)
    settings = Settings.from_env()
    assert (settings.detect_engine, settings.detect_threads) == ("onnxruntime", 1)
    monkeypatch.setenv("FACEQ_DETECT_ENGINE", "OpenCV")
    assert Settings.from_env().detect_engine == "opencv"
    monkeypatch.setenv("FACEQ_DETECT_ENGINE", "dnn")
    with pytest.raises(ConfigError, match="FACEQ_DETECT_ENGINE='dnn': choose one of onnxruntime, opencv"):
        Settings.from_env()
