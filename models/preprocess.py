"""Bytes → 112×112 uint8 BGR face crops, with a clear error for every kind of bad input.

Decoding uses Pillow, as the reference pipeline does (``Image.open`` → EXIF transpose →
RGB): it reads the header before the pixels, so size limits are checked before any large
allocation, and it reports truncation instead of padding with grey. Two modes:

- ``crop``: the input is already a face crop; resize it (the reference without detection);
- ``detect``: YuNet finds the faces; each usable one (≥ 10 px) is aligned to the ArcFace
  template (the reference with detection). The largest face is the item's face.

Normalisation to [-1, 1] happens later, on the model's device.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from faceq.errors import BadInputError
from models.align import align_face
from models.detect import FaceDetector, usable_faces
from models.rts import INPUT_SIZE


@dataclass(frozen=True)
class FaceCrop:
    pixels: np.ndarray  # (112, 112, 3) uint8, BGR
    bbox: list[float]  # x1, y1, x2, y2 in the decoded image
    landmarks: list[float] | None = None  # five (x, y) points in the decoded image


@dataclass(frozen=True)
class PreparedImage:
    faces: list[FaceCrop]  # largest first; empty when no usable face was found
    face_count: int


def image_size(data: bytes) -> int:
    """Pixels of an encoded image from its header alone (0 when the header cannot be read:
    decoding then reports why). Reserves decode memory before any large allocation."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return width * height
    except Exception:
        return 0


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 BGR array, EXIF orientation applied."""
    if not data:
        raise BadInputError("empty", "the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise BadInputError("too_large", f"{len(data)} bytes exceeds FACEQ_MAX_IMAGE_BYTES={max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        known = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
        if known:
            raise BadInputError("truncated", f"starts like a {known} file but its header is cut short or damaged") \
                from None
        raise BadInputError("not_an_image", "not a recognised image format (JPEG, PNG, WebP, BMP, TIFF, …)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInputError("too_large", "image dimensions exceed Pillow's decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError) as exc:  # the header itself is cut short or damaged
        raise BadInputError(_damage_code(exc), f"image header cannot be read: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadInputError(
            "too_large", f"{width}×{height} = {width * height} pixels exceeds FACEQ_MAX_IMAGE_PIXELS={max_pixels}"
        )
    if width == 0 or height == 0:
        raise BadInputError("corrupt", f"image has no pixels ({width}×{height})")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
    except OSError as exc:
        raise BadInputError(_damage_code(exc), f"{image.format or 'image'} data cannot be decoded: {exc}") from None
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError("corrupt", f"{image.format or 'image'} data cannot be decoded: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"RIFF", "WebP"), (b"GIF8", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def _damage_code(exc: Exception) -> str:
    return "truncated" if "truncated" in str(exc).lower() else "corrupt"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode → 8-bit RGB. 16/32-bit greyscale is scaled down (Pillow's own conversion
    would clip every value above 255 to white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.uint32)
        shift = 8 if image.mode.startswith("I;16") or wide.max() > 255 else 0
        image = Image.fromarray((wide >> shift).clip(0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def crop_face(image_bgr: np.ndarray) -> PreparedImage:
    """Crop mode: the input is already a face crop; resize it to the network's input."""
    height, width = image_bgr.shape[:2]
    pixels = cv2.resize(image_bgr, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return PreparedImage([FaceCrop(pixels, [0.0, 0.0, float(width), float(height)])], face_count=1)


def detect_faces(image_bgr: np.ndarray, detector: FaceDetector, min_face: float = 10) -> PreparedImage:
    """Detect mode: every usable face, aligned, largest first."""
    faces = usable_faces(detector.detect(image_bgr), min_face)
    crops = [
        FaceCrop(align_face(image_bgr, face.landmarks), face.bbox.tolist(), face.landmarks.reshape(-1).tolist())
        for face in faces
    ]
    return PreparedImage(crops, face_count=len(crops))


def normalize_batch(batch_bgr_uint8, dtype=None):
    """(N, 112, 112, 3) uint8 BGR tensor → (N, 3, 112, 112) RGB in [-1, 1], on its device.

    The reference: BGR→RGB, CHW, ``(x / 255 − 0.5) / 0.5``.
    """
    x = batch_bgr_uint8.flip(-1).permute(0, 3, 1, 2)
    x = x.float().div_(255.0).sub_(0.5).div_(0.5)
    return x if dtype is None else x.to(dtype)
