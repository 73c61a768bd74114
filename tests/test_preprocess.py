"""Decoding, crop-mode resizing and normalisation give the reference's numbers and clear errors."""

import cv2
import numpy as np
import pytest
import torch

from faceq.errors import BadInputError
from faceq.models.preprocess import crop_face, decode_image, normalize_batch
from devstack.samples import BROKEN, broken_files, draw_face, encode

LIMITS = dict(max_bytes=32 << 20, max_pixels=50_000_000)


def test_normalisation_is_bgr_to_rgb_chw_and_x_over_255_minus_half_over_half():
    crop = np.zeros((1, 112, 112, 3), dtype=np.uint8)
    crop[0, 5, 7] = (0, 128, 255)  # B, G, R
    x = normalize_batch(torch.from_numpy(crop))
    assert x.shape == (1, 3, 112, 112) and x.dtype == torch.float32
    assert x[0, :, 5, 7].tolist() == pytest.approx([1.0, (128 / 255 - 0.5) / 0.5, -1.0], abs=1e-6)  # R, G, B
    assert x[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0]


def test_normalisation_matches_the_reference_numpy_pipeline():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    reference = np.stack([((c[:, :, ::-1].transpose(2, 0, 1) / 255.0 - 0.5) / 0.5).astype(np.float32) for c in crops])
    assert np.allclose(normalize_batch(torch.from_numpy(crops)).numpy(), reference, atol=1e-6)


def test_crop_mode_resizes_the_whole_image_and_reports_its_box():
    image = draw_face(np.random.default_rng(1), 200)
    prepared = crop_face(image)
    assert prepared.face_count == 1
    (crop,) = prepared.faces
    assert crop.pixels.shape == (112, 112, 3) and crop.pixels.dtype == np.uint8
    assert np.array_equal(crop.pixels, cv2.resize(image, (112, 112), interpolation=cv2.INTER_LINEAR))
    assert crop.bbox == [0.0, 0.0, 200.0, 200.0] and crop.landmarks is None


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tiff"])
def test_common_formats_decode_to_bgr(ext):
    image = draw_face(np.random.default_rng(2), 120)
    decoded = decode_image(encode(image, ext), **LIMITS)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    tolerance = 10 if ext in (".jpg", ".webp") else 0  # lossy formats; a channel swap is far above 10
    assert np.abs(decoded.astype(int) - image.astype(int)).mean() <= tolerance


def test_greyscale_decodes_to_three_channels():
    grey = cv2.cvtColor(draw_face(np.random.default_rng(3), 100), cv2.COLOR_BGR2GRAY)
    decoded = decode_image(encode(grey, ".png"), **LIMITS)
    assert decoded.shape == (100, 100, 3)
    assert np.array_equal(decoded[:, :, 0], grey)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_kind_of_broken_file_gets_its_own_reason(name):
    data = broken_files(np.random.default_rng(4))[name]
    with pytest.raises(BadInputError) as raised:
        decode_image(data, **LIMITS)
    assert raised.value.code == BROKEN[name]
    assert str(raised.value).startswith(f"{BROKEN[name]}: ")


def test_size_limits_are_checked_before_decoding():
    png = encode(draw_face(np.random.default_rng(5), 300), ".png")
    with pytest.raises(BadInputError, match=r"too_large: .* exceeds FACEQ_MAX_IMAGE_BYTES=100"):
        decode_image(png, max_bytes=100, max_pixels=10**9)
    with pytest.raises(BadInputError, match=r"300×300 = 90000 pixels exceeds FACEQ_MAX_IMAGE_PIXELS=1000"):
        decode_image(png, max_bytes=1 << 30, max_pixels=1000)
