"""Every image format users actually have decodes to the right pixels, generated on the fly."""

import io

import numpy as np
import pytest
from PIL import Image

from faceq.errors import BadInputError
from faceq.models.preprocess import decode_image
from devstack.samples import draw_face

LIMITS = dict(max_bytes=32 << 20, max_pixels=50_000_000)


@pytest.fixture(scope="module")
def face_rgb() -> np.ndarray:
    return np.ascontiguousarray(draw_face(np.random.default_rng(0), 96)[:, :, ::-1])  # RGB


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _bgr_to_rgb(decoded: np.ndarray) -> np.ndarray:
    return decoded[:, :, ::-1].astype(int)


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 6),
        ("JPEG", {"quality": 95, "progressive": True}, 6),
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("WEBP", {"quality": 90}, 8),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
    ],
)
def test_rgb_formats(face_rgb, fmt, options, tolerance):
    decoded = decode_image(_save(Image.fromarray(face_rgb), fmt, **options), **LIMITS)
    assert decoded.shape == face_rgb.shape and decoded.dtype == np.uint8
    assert np.abs(_bgr_to_rgb(decoded) - face_rgb).mean() <= tolerance


def test_cmyk_jpeg_becomes_rgb(face_rgb):
    cmyk = Image.fromarray(face_rgb).convert("CMYK")
    decoded = decode_image(_save(cmyk, "JPEG", quality=95), **LIMITS)
    assert decoded.shape == face_rgb.shape
    assert np.abs(_bgr_to_rgb(decoded) - face_rgb).mean() < 8


def test_greyscale_jpeg_becomes_three_equal_channels(face_rgb):
    grey = Image.fromarray(face_rgb).convert("L")
    decoded = decode_image(_save(grey, "JPEG", quality=95), **LIMITS)
    assert decoded.shape == face_rgb.shape
    assert np.array_equal(decoded[:, :, 0], decoded[:, :, 2])
    assert np.abs(decoded[:, :, 0].astype(int) - np.asarray(grey, dtype=int)).mean() < 3


def test_16_bit_greyscale_png_is_scaled_not_clipped(face_rgb):
    grey8 = np.asarray(Image.fromarray(face_rgb).convert("L"), dtype=np.uint16)
    grey16 = Image.fromarray(grey8 * 257)  # full 16-bit range
    assert grey16.mode.startswith("I;16")
    decoded = decode_image(_save(grey16, "PNG"), **LIMITS)
    assert np.array_equal(decoded[:, :, 1], grey8.astype(np.uint8))


def test_16_bit_rgb_png(face_rgb):
    import cv2

    wide = face_rgb[:, :, ::-1].astype(np.uint16) * 257  # BGR, 16 bits per channel
    ok, data = cv2.imencode(".png", wide)
    assert ok
    decoded = decode_image(data.tobytes(), **LIMITS)
    assert np.abs(_bgr_to_rgb(decoded) - face_rgb).max() <= 1


def test_alpha_is_dropped_like_the_reference(face_rgb):
    rgba = np.dstack([face_rgb, np.full(face_rgb.shape[:2], 128, dtype=np.uint8)])
    decoded = decode_image(_save(Image.fromarray(rgba), "PNG"), **LIMITS)
    assert np.array_equal(_bgr_to_rgb(decoded), face_rgb)


def test_palette_png(face_rgb):
    palette = Image.fromarray(face_rgb).convert("P")
    decoded = decode_image(_save(palette, "PNG"), **LIMITS)
    assert np.array_equal(_bgr_to_rgb(decoded), np.asarray(palette.convert("RGB")))


@pytest.mark.parametrize(
    ("orientation", "stored_as"),  # how a camera stores an upright scene for each EXIF orientation
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
)
def test_exif_orientation_of_phone_photos_is_applied(orientation, stored_as):
    upright = np.zeros((40, 80, 3), dtype=np.uint8)
    upright[:, :40] = (255, 0, 0)  # left half red: tells the rotations apart
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = _save(Image.fromarray(upright).transpose(stored_as), "JPEG", quality=95, exif=exif)
    rgb = _bgr_to_rgb(decode_image(stored, **LIMITS))
    assert rgb.shape[:2] == (40, 80)
    assert rgb[:, :30, 0].mean() > 200 and rgb[:, 50:, 0].mean() < 50


def test_pixel_limit_stops_decompression_bombs_before_decoding():
    big = _save(Image.new("L", (4000, 3000)), "PNG")  # small file, 12 Mpx
    with pytest.raises(BadInputError, match=r"too_large: 4000×3000 = 12000000 pixels"):
        decode_image(big, max_bytes=1 << 30, max_pixels=10_000_000)
    assert decode_image(big, max_bytes=1 << 30, max_pixels=12_000_000).shape == (3000, 4000, 3)


@pytest.mark.parametrize("keep", [20, 300, 1000])
def test_a_jpeg_cut_anywhere_is_truncated_not_an_internal_error(face_rgb, keep):
    jpeg = _save(Image.fromarray(face_rgb), "JPEG", quality=95)
    with pytest.raises(BadInputError) as raised:
        decode_image(jpeg[:keep], **LIMITS)
    assert raised.value.code == "truncated"
