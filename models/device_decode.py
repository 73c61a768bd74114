"""Photos decoded straight onto the device, with the CPU decoder (models/preprocess.py) behind it.

On a GPU, the first of these that is there decodes plain JPEGs in batches:

- ``torchvision.io.decode_jpeg(list, device="cuda")``: nvJPEG's batched decoder;
- nvImageCodec (``nvidia.nvimgcodec``), where torchvision is missing or cannot load;

everything else (no CUDA, or neither library) decodes on the CPU. Only JPEGs that the CPU path
would decode without Pillow's help go to the device: YCbCr or greyscale, no EXIF rotation,
within the size limits (the same header checks). Any other photo (CMYK, PNG, rotated), or any
that the device decoder refuses, is decoded by ``decode_image``, whose errors are the worker's
usual bad-input rows: a device decoder never turns a photo into an error of its own.

Every photo comes out as a (3, H, W) uint8 BGR tensor on the device, or as the
``BadInputError`` the CPU decoder gave.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from faceq.errors import BadInputError
from faceq.models.preprocess import decode_image, jpeg_orientation

try:  # optional: a header check without decoding
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

log = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
DecodedPhoto = torch.Tensor | BadInputError
BatchDecoder = Callable[[list[bytes], torch.device], list[torch.Tensor | None]]  # RGB (3, H, W) or None


def device_ready_jpeg(data: bytes, max_bytes: int, max_pixels: int) -> bool:
    """A JPEG a device decoder gives the same photo for as the CPU path: YCbCr or grey, upright,
    within the limits, ending in its end-of-image marker. Anything else goes to ``decode_image``
    (which also says what is wrong)."""
    if simplejpeg is None or not data.startswith(_JPEG_MAGIC) or len(data) > max_bytes:
        return False
    if not data.endswith(_JPEG_END):  # maybe truncated: the CPU decoder says so, a device decoder may not
        return False
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False
    return colorspace in ("YCbCr", "Gray") and 0 < width * height <= max_pixels and jpeg_orientation(data) == 1


def torchvision_decoder() -> BatchDecoder | None:
    """nvJPEG through torchvision, where torchvision imports beside this torch and CUDA is there."""
    if not torch.cuda.is_available():
        return None
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # not installed, or built for another torch
        return None

    def decode(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad photo fails the whole batch: find it one by one
            return [_one(decode_jpeg, t, ImageReadMode.RGB, device) for t in tensors]

    return decode


def _one(decode_jpeg, tensor: torch.Tensor, mode, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(tensor, mode=mode, device=device)
    except RuntimeError:
        return None


def nvimgcodec_decoder() -> BatchDecoder | None:
    """NVIDIA's nvImageCodec, where it is installed and CUDA is there (untested here: no GPU)."""
    if not torch.cuda.is_available():
        return None
    try:
        from nvidia import nvimgcodec
    except Exception:
        return None
    decoder = nvimgcodec.Decoder()

    def decode(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
        with torch.cuda.device(device):
            images = decoder.decode(datas)  # None where an image cannot be decoded
        return [None if image is None else torch.as_tensor(image, device=device).permute(2, 0, 1) for image in images]

    return decode


def select_decoder(device: torch.device) -> tuple[str, BatchDecoder | None]:
    """The device decoder to use and its name: ``nvjpeg``, ``nvimgcodec``, or ``cpu`` (None)."""
    if device.type != "cuda":
        return "cpu", None
    for name, factory in (("nvjpeg", torchvision_decoder), ("nvimgcodec", nvimgcodec_decoder)):
        decoder = factory()
        if decoder is not None:
            return name, decoder
    return "cpu", None


class PhotoDecoder:
    """Decodes a batch of file bytes onto ``device``; ``decoder`` overrides the selection (tests)."""

    def __init__(self, device: torch.device | str, max_bytes: int, max_pixels: int,
                 decoder: BatchDecoder | None | str = "auto"):
        self.device = torch.device(device)
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        if decoder == "auto":
            self.name, self._decode = select_decoder(self.device)
        else:
            self.name, self._decode = ("cpu", None) if decoder is None else ("custom", decoder)
        self.fallbacks = 0  # photos a device decoder took but could not decode

    def decode(self, datas: list[bytes]) -> list[DecodedPhoto]:
        photos: list[DecodedPhoto | None] = [None] * len(datas)
        if self._decode is not None:
            ready = [i for i, d in enumerate(datas) if device_ready_jpeg(d, self.max_bytes, self.max_pixels)]
            if ready:
                for i, rgb in zip(ready, self._decode_safely([datas[i] for i in ready])):
                    if rgb is not None and rgb.ndim == 3 and rgb.shape[0] == 3:
                        photos[i] = rgb.flip(0)  # RGB → BGR, the CPU path's channel order
                    else:
                        self.fallbacks += 1
        for i, photo in enumerate(photos):
            if photo is None:
                photos[i] = self._decode_on_cpu(datas[i])
        return photos

    def _decode_safely(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        try:
            return self._decode(datas, self.device)
        except Exception:  # the device decoder itself broke: every photo of the batch goes to the CPU
            log.exception("device JPEG decoder failed on a batch of %d; decoding them on the CPU", len(datas))
            return [None] * len(datas)

    def _decode_on_cpu(self, data: bytes) -> DecodedPhoto:
        try:
            bgr = decode_image(data, self.max_bytes, self.max_pixels)
        except BadInputError as exc:
            return exc
        return torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).to(self.device)
