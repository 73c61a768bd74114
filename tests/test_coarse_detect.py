"""Detect mode coarse to fine (models/coarse_detect.py) against the full-resolution path, on real
photos encoded as JPEG: the same faces, boxes and landmarks, and embeddings (the seeded
random-weight IR-SE-64) within cos 0.9999; region decodes bit-identical to a full decode;
photos it cannot take (PNG, progressive, CMYK, EXIF-rotated) fall back, never fail."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from faceq.models.coarse_detect import CoarseToFineDetector, StageSeconds, coarse_eighths
from faceq.models.detect import FaceDetector
from faceq.models.jpeg_region import decode_full, decode_region, plain_jpeg, region_decoding_available
from faceq.models.preprocess import decode_image, detect_faces
from faceq.models.weights import LoadedModel, load_model
from tests.conftest import YUNET, needs_yunet
from tests.photos import astronaut_bgr
from faceq.workers.engine import Engine

pytestmark = pytest.mark.skipif(not region_decoding_available(), reason="PyTurboJPEG / libturbojpeg not installed")
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
    data = jpeg(PHOTOS[name]())
    full = detect_faces(decode_image(data, BIG, BIG), detector)
    seconds = StageSeconds()
    fast = CoarseToFineDetector(detector, min_face_px).prepare(data, BIG, seconds=seconds)
    assert fast is not None, "a large baseline JPEG takes the coarse path"
    if min_face_px and name.startswith("small-face"):
        assert fast.face_count <= full.face_count  # the setting's trade: smaller faces may be missed
        return
    assert full.face_count >= 1
    assert_same_faces(full, fast, engine)


@needs_yunet
def test_the_small_face_is_found_by_both_paths(detector):
    data = jpeg(small_face_in_large_photo())
    full = detect_faces(decode_image(data, BIG, BIG), detector)
    fast = CoarseToFineDetector(detector).prepare(data, BIG)
    assert full.face_count == fast.face_count == 1


def test_the_coarse_scale_keeps_the_full_searchs_faces_unless_told_otherwise():
    assert coarse_eighths(1280 / 2400) == 4  # 0.75 × 0.533 = 0.4 → 4/8
    assert coarse_eighths(1280 / 4000) == 2
    assert coarse_eighths(1280 / 2400, min_face_px=160) == 1
    assert coarse_eighths(1280 / 2400, min_face_px=40) == 4  # never finer than recall needs


@pytest.mark.parametrize("subsampling", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
                                         cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
def test_region_decodes_are_bit_identical_to_a_full_decode(subsampling):
    rng = np.random.default_rng(2)
    image = upscaled(astronaut_bgr(), 1003, 761)  # not a multiple of any MCU
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                        subsampling])[1].tobytes()
    photo = plain_jpeg(data, BIG)
    full = decode_full(photo)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, 1000)), int(rng.integers(0, 758))
        x1, y1 = int(rng.integers(x0 + 1, 1004)), int(rng.integers(y0 + 1, 762))
        region = decode_region(photo, x0, y0, x1, y1)
        if region is not None:  # None: the partial MCUs at the edges; the caller decodes all then
            assert np.array_equal(region, full[y0:y1, x0:x1]), (x0, y0, x1, y1)


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
@pytest.mark.parametrize("encode", [_png, _progressive, _cmyk, _rotated, lambda image: b"\xff\xd8\xff\xe0garbage"],
                         ids=["png", "progressive", "cmyk", "exif-rotated", "damaged"])
def test_photos_it_cannot_take_fall_back_to_the_full_path(detector, encode):
    data = encode(upscaled(astronaut_bgr(), 1920, 2400))
    assert CoarseToFineDetector(detector).prepare(data, BIG) is None


@needs_yunet
def test_small_photos_take_the_full_path(detector):
    assert CoarseToFineDetector(detector).prepare(jpeg(astronaut_bgr()), BIG) is None
