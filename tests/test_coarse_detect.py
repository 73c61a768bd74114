"""Detect mode coarse to fine (models/coarse_detect.py) against the full-resolution path, on real
photos encoded as JPEG: the same faces, boxes and landmarks, and embeddings (the seeded
random-weight IR-SE-64) within cos 0.9999, with either YuNet engine; every format the decoder
reads (PNG, progressive, CMYK, EXIF-rotated) takes it; small photos take the full path."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from faceq.models.coarse_detect import CoarseToFineDetector, StageSeconds, coarse_image, coarse_scale
from faceq.models.detect import FaceDetector
from faceq.models.preprocess import decode_image, detect_faces
from faceq.models.weights import LoadedModel, load_model
from tests.conftest import YUNET, needs_yunet
from tests.photos import astronaut_bgr
from faceq.workers.engine import Engine

BIG = 1 << 31


def grace_hopper_bgr() -> np.ndarray:
    from matplotlib import cbook

    return cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def upscaled(image: np.ndarray, width: int, height: int, seed: int = 0) -> np.ndarray:
    """``image`` filling a ``width``×``height`` photo (centre crop of a cubic upscale, light noise)."""
    scale = max(width / image.shape[1], height / image.shape[0])
    big = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                     interpolation=cv2.INTER_CUBIC)
    left, top = (big.shape[1] - width) // 2, (big.shape[0] - height) // 2
    big = big[top : top + height, left : left + width]
    noise = np.random.default_rng(seed).normal(0, 3, big.shape)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def tiles(width: int = 3000, height: int = 2250) -> np.ndarray:
    """Four faces of different sizes on one large photo."""
    canvas = np.full((height, width, 3), 90, dtype=np.uint8)
    for (x, y, side), photo in zip([(0, 0, 1000), (1100, 100, 800), (2000, 1200, 600), (200, 1300, 500)],
                                   [astronaut_bgr(), grace_hopper_bgr(), astronaut_bgr()[:, ::-1], grace_hopper_bgr()]):
        tile = cv2.resize(photo, (side, round(side * photo.shape[0] / photo.shape[1])), interpolation=cv2.INTER_CUBIC)
        tile = tile[: height - y, : width - x]
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return canvas


def small_face_in_large_photo(head_width: int = 150) -> np.ndarray:
    """One head ``head_width`` px wide on a 4000×3000 textured background."""
    rng = np.random.default_rng(5)
    canvas = cv2.GaussianBlur(rng.integers(60, 200, (3000, 4000, 3), dtype=np.uint8), (0, 0), 4)
    head = astronaut_bgr()[20:260, 140:320]
    head = cv2.resize(head, (head_width, round(head_width * head.shape[0] / head.shape[1])),
                      interpolation=cv2.INTER_AREA)
    canvas[1700 : 1700 + head.shape[0], 2500 : 2500 + head_width] = head
    return canvas


def _turned(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated about its centre (a face turned 90° is no face to YuNet, on either path)."""
    centre = (image.shape[1] / 2, image.shape[0] / 2)
    return cv2.warpAffine(image, cv2.getRotationMatrix2D(centre, degrees, 1.0), image.shape[1::-1],
                          borderMode=cv2.BORDER_REFLECT)


PHOTOS = {
    "astronaut-1920x2400": lambda: upscaled(astronaut_bgr(), 1920, 2400),
    "grace-hopper-1920x2400": lambda: upscaled(grace_hopper_bgr(), 1920, 2400),
    "astronaut-mirrored-4000x3000": lambda: upscaled(astronaut_bgr()[:, ::-1], 4000, 3000),
    "grace-hopper-rotated-3000x4000": lambda: upscaled(_turned(grace_hopper_bgr(), -12), 3000, 4000),
    "astronaut-tilted-2400x1920": lambda: upscaled(_turned(astronaut_bgr(), 20), 2400, 1920),
    "four-faces-3000x2250": tiles,
    "small-face-4000x3000": small_face_in_large_photo,
}


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    if not YUNET.is_file():
        pytest.skip(f"YuNet weights not found at {YUNET}")
    return FaceDetector(str(YUNET))


@pytest.fixture(scope="module")
def onnxruntime_detector() -> FaceDetector:
    if not YUNET.is_file():
        pytest.skip(f"YuNet weights not found at {YUNET}")
    return FaceDetector(str(YUNET), engine="onnxruntime")


@pytest.fixture(scope="module")
def engine() -> Engine:
    model = load_model(None, "ir_se_64", seed=123).model
    return Engine(LoadedModel(model, "parity", random_weights=True), "cpu", "fp32", max_batch=8)


def assert_same_faces(full, fast, engine: Engine, landmark_px: float = 0.01) -> float:
    """Measured: boxes and landmarks within 0.0002 photo px on every photo (float rounding: the
    region holds all YuNet's outputs depend on, ``REACH``)."""
    assert fast.face_count == full.face_count
    min_cos = 1.0
    if full.faces:
        full_embeddings, _ = engine.infer(np.stack([f.pixels for f in full.faces]))
        fast_embeddings, _ = engine.infer(np.stack([f.pixels for f in fast.faces]))
        min_cos = float((full_embeddings * fast_embeddings).sum(axis=1).min())
    for a, b in zip(full.faces, fast.faces):
        np.testing.assert_allclose(b.bbox, a.bbox, atol=landmark_px)
        np.testing.assert_allclose(b.landmarks, a.landmarks, atol=landmark_px)
    assert min_cos >= 0.9999, min_cos
    return min_cos


@needs_yunet
@pytest.mark.parametrize(("name", "min_face_px"), [
    (name, 0) for name in PHOTOS
] + [("astronaut-1920x2400", 160), ("grace-hopper-1920x2400", 160), ("four-faces-3000x2250", 160),
     ("small-face-4000x3000", 160)])
def test_coarse_to_fine_gives_the_full_paths_faces(detector, engine, name, min_face_px):
    photo = decode_image(jpeg(PHOTOS[name]()), BIG, BIG)
    full = detect_faces(photo, detector)
    seconds = StageSeconds()
    fast = CoarseToFineDetector(detector, min_face_px).prepare(photo, seconds=seconds)
    assert fast is not None, "a large photo takes the coarse path"
    assert seconds.coarse_detect > 0 and seconds.fine_detect > 0
    if min_face_px and name.startswith("small-face"):
        assert fast.face_count <= full.face_count  # the setting's trade: smaller faces may be missed
        return
    assert full.face_count >= 1
    assert_same_faces(full, fast, engine)


@needs_yunet
@pytest.mark.parametrize("name", ["astronaut-1920x2400", "four-faces-3000x2250", "small-face-4000x3000"])
def test_onnxruntime_coarse_to_fine_gives_the_opencv_full_paths_faces(detector, onnxruntime_detector, engine, name):
    """The fast engine on the fast path against OpenCV's YuNet on the full path: the worker's
    defaults against the reference."""
    photo = decode_image(jpeg(PHOTOS[name]()), BIG, BIG)
    full = detect_faces(photo, detector)
    fast = CoarseToFineDetector(onnxruntime_detector).prepare(photo)
    assert full.face_count >= 1
    assert_same_faces(full, fast, engine, landmark_px=0.005)


@needs_yunet
def test_the_small_face_is_found_by_both_paths(detector):
    photo = decode_image(jpeg(small_face_in_large_photo()), BIG, BIG)
    full = detect_faces(photo, detector)
    fast = CoarseToFineDetector(detector).prepare(photo)
    assert full.face_count == fast.face_count == 1


@needs_yunet
def test_a_portraits_hair_and_shoulders_cost_no_fine_pass(detector):
    """At the coarse threshold YuNet also scores hair, hands and shoulders (0.1–0.33); only small
    candidates (where faces at the edge of the full search's reach score low) pass from there."""
    from faceq.models.coarse_detect import COARSE_SCORE_LARGE, LARGE_CANDIDATE_PX

    photo = decode_image(jpeg(PHOTOS["astronaut-1920x2400"]()), BIG, BIG)
    path = CoarseToFineDetector(detector)
    coarse = coarse_image(photo, coarse_scale(1280 / 2400))
    everything = path.coarse.detect(coarse)
    kept = path.candidates(coarse)
    assert len(everything) > len(kept) == 1  # the face alone
    assert kept[0].score > 0.9
    dropped = [face for face in everything if not any(np.array_equal(face.bbox, k.bbox) for k in kept)]
    assert all(face.score < COARSE_SCORE_LARGE and face.width >= LARGE_CANDIDATE_PX for face in dropped)


def test_the_coarse_scale_keeps_the_full_searchs_faces_unless_told_otherwise():
    assert coarse_scale(1280 / 2400) == pytest.approx(0.4667, abs=1e-4)  # 0.875 × 0.533
    assert coarse_scale(1280 / 4000) == pytest.approx(0.28)
    assert coarse_scale(1280 / 2400, min_face_px=160) == pytest.approx(0.125)  # a 160-px head, 20 px coarse
    assert coarse_scale(1280 / 2400, min_face_px=40) == pytest.approx(0.4667, abs=1e-4)  # never finer than recall needs


@pytest.mark.parametrize(("size", "scale", "expected"), [((2400, 1920), 0.4, (960, 768)), ((3000, 4000), 0.24, (720, 960)),
                                                         ((2401, 1923), 0.125, (300, 240)), ((600, 500), 0.9, (540, 450))])
def test_the_coarse_image_has_the_coarse_size_and_the_photos_content(size, scale, expected):
    rng = np.random.default_rng(3)
    flat = np.full((*size, 3), 120, np.uint8)
    flat[: size[0] // 2] = 40  # top half dark: the coarse image keeps where things are
    coarse = coarse_image(flat + rng.integers(0, 3, flat.shape, dtype=np.uint8), scale)
    assert coarse.shape == (*expected, 3)
    top, bottom = coarse[: expected[0] // 2 - 2].mean(), coarse[expected[0] // 2 + 2 :].mean()
    assert abs(top - 41) < 1.5 and abs(bottom - 121) < 1.5


def _png(image):
    return cv2.imencode(".png", image)[1].tobytes()


def _progressive(image):
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()


def _cmyk(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def _rotated(image):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


@needs_yunet
@pytest.mark.parametrize("encode", [_png, _progressive, _cmyk, _rotated], ids=["png", "progressive", "cmyk", "exif-rotated"])
def test_every_format_the_decoder_reads_takes_the_coarse_path(detector, engine, encode):
    """One decode, the full path's own (its formats, orientation and error codes), then both searches."""
    photo = decode_image(encode(upscaled(astronaut_bgr(), 1920, 2400)), BIG, BIG)
    full = detect_faces(photo, detector)
    fast = CoarseToFineDetector(detector).prepare(photo)
    assert fast is not None and full.face_count == 1
    assert_same_faces(full, fast, engine)


@needs_yunet
def test_small_photos_take_the_full_path(detector):
    assert CoarseToFineDetector(detector).prepare(astronaut_bgr()) is None
