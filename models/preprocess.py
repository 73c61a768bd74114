"""Bytes → 112×112 uint8 BGR face crops, with a clear error for every kind of bad input.

Decoding follows the reference pipeline (Pillow: ``Image.open`` → EXIF transpose → RGB): the
header is read before the pixels, so size limits are checked before any large allocation,
and truncation is reported instead of padded with grey. A plain JPEG (YCbCr or greyscale, no
EXIF rotation: nearly every input) is decoded by libjpeg-turbo straight to BGR through
simplejpeg, which releases the GIL for the whole decode and gives the same pixels as Pillow
(the same library, the same accurate DCT and upsampling; tested) at 2–3× less CPU; anything
else, or any JPEG simplejpeg refuses, goes through Pillow, which also names what is wrong.
Two modes:

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
from faceq.models.align import INPUT_SIZE, align_face
from faceq.models.detect import FaceDetector, usable_faces

try:  # optional: without it every image goes through Pillow (same pixels, more CPU, more GIL)
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION_TAG = 0x0112


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
    if simplejpeg is not None and data[:3] == _JPEG_MAGIC:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return height * width
        except ValueError:
            pass
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return width * height
    except Exception:
        return 0


def decode_image(data: bytes, max_bytes: int, max_pixels: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 BGR array, EXIF orientation applied.

    ``out``: a contiguous (h, w, 3) uint8 array that a plain JPEG of exactly that size is
    decoded into (a row of a chunk's batch: no allocation, no copy later); any other image
    gets an array of its own, as without ``out``.
    """
    if not data:
        raise BadInputError("empty", "the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise BadInputError("too_large", f"{len(data)} bytes exceeds FACEQ_MAX_IMAGE_BYTES={max_bytes}")
    if data[:3] == _JPEG_MAGIC and simplejpeg is not None:
        fast = _decode_plain_jpeg(data, max_pixels, out)
        if fast is not None:
            return fast
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


def plain_jpeg_header(data: bytes, max_pixels: int) -> tuple[int, int, str] | None:
    """(height, width, chroma subsampling) of a YCbCr or greyscale JPEG without EXIF rotation;
    ``None`` for anything else (CMYK, rotated, damaged, huge); ``BadInputError`` over ``max_pixels``."""
    try:
        height, width, colorspace, subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if width * height > max_pixels:
        raise BadInputError(
            "too_large", f"{width}×{height} = {width * height} pixels exceeds FACEQ_MAX_IMAGE_PIXELS={max_pixels}"
        )
    if (colorspace not in ("YCbCr", "Gray") or not width or not height or width * height > Image.MAX_IMAGE_PIXELS
            or jpeg_orientation(data) != 1):
        return None
    return height, width, subsampling


def _decode_plain_jpeg(data: bytes, max_pixels: int, out: np.ndarray | None = None) -> np.ndarray | None:
    """A plain JPEG (``plain_jpeg_header``), decoded to BGR by libjpeg-turbo with the GIL
    released; ``None`` for anything else: Pillow decides."""
    header = plain_jpeg_header(data, max_pixels)
    if header is None:
        return None
    height, width, _ = header
    try:
        if out is not None and out.shape == (height, width, 3):
            return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True, buffer=out)
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)  # strict: truncation raises
    except ValueError:
        return None


def jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a JPEG, from its header segments: 1 when it has none; ``None``
    when the header cannot be walked, the tag is unusual, or XMP may carry one (Pillow honours
    XMP's ``tiff:Orientation`` too): the caller lets Pillow decide then."""
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA or (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)):
            return 1  # a frame or scan starts: the metadata segments are behind us
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xE1:
            segment = data[position + 4 : position + 2 + length]
            if segment.startswith(b"Exif\x00\x00"):
                return _exif_orientation(segment[6:])
            if b"Orientation" in segment:
                return None
        position += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int | None:
    """Tag 0x0112 of IFD0 in an EXIF (TIFF) block: 1 when absent, ``None`` when unreadable."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for k in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        if len(entry) < 12:
            return None
        if int.from_bytes(entry[:2], order) == _ORIENTATION_TAG:
            return int.from_bytes(entry[8:10], order) if int.from_bytes(entry[2:4], order) == 3 else None
    return 1


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


def crop_face(image_bgr: np.ndarray, out: np.ndarray | None = None) -> PreparedImage:
    """Crop mode: the input is already a face crop; resize it to the network's input (one
    already 112×112 is used as it is: the same array, not a copy). With ``out`` (a row of the
    chunk's batch) the crop ends up there, unless the image was decoded into it already."""
    height, width = image_bgr.shape[:2]
    if (height, width) == (INPUT_SIZE, INPUT_SIZE):  # already the network's size: resizing is the identity
        pixels = image_bgr
    else:
        pixels = cv2.resize(image_bgr, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    if out is not None and pixels.ctypes.data != out.ctypes.data:
        out[...] = pixels
        pixels = out
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
