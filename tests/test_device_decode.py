"""Device JPEG decoding: which decoder is chosen, and every photo it cannot take goes to the CPU path."""

import io

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image

from faceq.errors import BadInputError
from faceq.models.device_decode import PhotoDecoder, device_ready_jpeg, select_decoder
from faceq.models.preprocess import decode_image
from tests.photos import astronaut_bgr

LIMITS = {"max_bytes": 1 << 26, "max_pixels": 1 << 26}


def _encoded(fmt: str) -> bytes:
    image = Image.fromarray(astronaut_bgr()[:, :, ::-1])
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, "JPEG", quality=90)
    elif fmt == "progressive":
        image.save(buffer, "JPEG", quality=90, progressive=True)
    elif fmt == "grey":
        image.convert("L").save(buffer, "JPEG", quality=90)
    elif fmt == "cmyk":
        image.convert("CMYK").save(buffer, "JPEG", quality=90)
    elif fmt == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        image.save(buffer, "JPEG", quality=90, exif=exif)
    elif fmt == "png":
        image.save(buffer, "PNG")
    return buffer.getvalue()


class FakeDeviceDecoder:
    """A stand-in for nvJPEG: decodes with libjpeg-turbo, records what it was given, and can
    refuse some photos (None) or fail the whole batch."""

    def __init__(self, refuse=(), fail=False):
        self.seen: list[bytes] = []
        self.refuse, self.fail = set(refuse), fail

    def __call__(self, datas, device):
        self.seen.extend(datas)
        if self.fail:
            raise RuntimeError("nvjpeg: batch failed")
        return [None if k in self.refuse else torch.from_numpy(simplejpeg.decode_jpeg(d, "RGB")).permute(2, 0, 1)
                for k, d in enumerate(datas)]


def test_without_cuda_everything_decodes_on_the_cpu():
    assert select_decoder(torch.device("cpu")) == ("cpu", None)
    if not torch.cuda.is_available():
        assert select_decoder(torch.device("cuda")) == ("cpu", None)
    assert PhotoDecoder("cpu", **LIMITS).name == "cpu"


@pytest.mark.parametrize("fmt, ready", [("jpeg", True), ("grey", True), ("progressive", True), ("cmyk", False),
                                        ("rotated", False), ("png", False)])
def test_only_plain_upright_jpegs_go_to_the_device(fmt, ready):
    assert device_ready_jpeg(_encoded(fmt), **LIMITS) is ready
    assert not device_ready_jpeg(_encoded("jpeg"), max_bytes=100, max_pixels=1 << 26)
    assert not device_ready_jpeg(_encoded("jpeg"), max_bytes=1 << 26, max_pixels=1000)
    assert not device_ready_jpeg(_encoded("jpeg")[:-10], **LIMITS)  # truncated: the CPU path reports it


def test_every_photo_comes_out_as_the_cpu_path_decodes_it():
    formats = ["jpeg", "cmyk", "png", "rotated", "grey", "progressive"]
    datas = [_encoded(f) for f in formats]
    fake = FakeDeviceDecoder()
    photos = PhotoDecoder("cpu", **LIMITS, decoder=fake).decode(datas)
    assert len(fake.seen) == 3  # the plain JPEGs only
    for fmt, data, photo in zip(formats, datas, photos):
        assert photo.dtype == torch.uint8 and photo.shape[0] == 3, fmt
        reference = decode_image(data, **LIMITS)
        assert np.array_equal(photo.permute(1, 2, 0).numpy(), reference), fmt  # BGR, EXIF applied


def test_photos_the_device_refuses_or_a_failed_batch_fall_back_to_the_cpu():
    datas = [_encoded("jpeg"), _encoded("progressive"), _encoded("jpeg")]
    refusing = PhotoDecoder("cpu", **LIMITS, decoder=FakeDeviceDecoder(refuse={1}))
    photos = refusing.decode(datas)
    assert refusing.fallbacks == 1 and all(isinstance(p, torch.Tensor) for p in photos)
    failing = PhotoDecoder("cpu", **LIMITS, decoder=FakeDeviceDecoder(fail=True))
    assert all(isinstance(p, torch.Tensor) for p in failing.decode(datas))


def test_bad_files_give_the_cpu_paths_errors_not_the_devices():
    truncated = _encoded("jpeg")[:2000]
    photos = PhotoDecoder("cpu", **LIMITS, decoder=FakeDeviceDecoder(fail=True)).decode([b"", b"not an image",
                                                                                          truncated])
    assert [p.code for p in photos] == ["empty", "not_an_image", "truncated"]
    assert all(isinstance(p, BadInputError) for p in photos)
