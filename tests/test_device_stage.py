"""A worker with FACEQ_DETECT_DEVICE prepares a detect chunk through the device path (on the CPU here)."""

import cv2
import numpy as np
import pytest

from faceq.storage.allow import AllowedSources
from faceq.errors import BadInputError
from faceq.job.spec import Item
from faceq.settings import Settings
from faceq.storage.store import open_storage
from faceq.models.detect import FaceDetector
from faceq.models.device_align import FIXED_POINT
from faceq.models.null import NullModel
from faceq.models.preprocess import PreparedImage
from tests.conftest import YUNET, needs_yunet
from tests.parity_photos import grace_hopper_bgr, tiled_faces_bgr
from tests.photos import astronaut_bgr
from faceq.workers.service import ChunkProcessor

pytestmark = needs_yunet


class _Engine:
    device, model_id, max_batch = "cpu", "test-null", 64

    def __init__(self):
        self.model = NullModel()

    def infer(self, crops):
        return self.model.infer(crops)


def _items(folder):
    folder.mkdir()
    photos = {"astronaut.jpg": astronaut_bgr(), "hopper.png": grace_hopper_bgr(), "tiled.jpg": tiled_faces_bgr()}
    items = []
    for name, image in photos.items():
        cv2.imwrite(str(folder / name), image)
        items.append(Item(name, (folder / name).as_uri()))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    items.append(Item("broken.jpg", (folder / "broken.jpg").as_uri()))
    items.append(Item("missing.jpg", (folder / "missing.jpg").as_uri()))
    return items


# the reference is the full-resolution CPU path (where the worker also has a coarse-to-fine one)
FULL_PATH = {"detect_path": "full"} if "detect_path" in Settings.__dataclass_fields__ else {}


def _processor(tmp_path, **settings) -> ChunkProcessor:
    storage = open_storage((tmp_path / "store").as_uri())
    return ChunkProcessor(Settings(detector_weights=str(YUNET), io_threads=2, **FULL_PATH, **settings), storage, None,
                          _Engine(), "w", detector=FaceDetector(str(YUNET)))


def test_the_detect_device_setting_is_read_and_off_by_default(monkeypatch):
    assert Settings().detect_device is None
    monkeypatch.setenv("FACEQ_DETECT_DEVICE", "cpu")
    assert Settings.from_env().detect_device == "cpu"


# Landmarks of the two YuNets differ by ~1e-4 px. OpenCV 5 samples in floating point, so the
# crops differ by at most a rounding; OpenCV 4 rounds coordinates to 1/32 px, and a landmark
# 1e-4 px away can fall on the other side of such a step: a sample 1/32 px over, 2 levels on edges.
PIXEL_TOLERANCE = 2 if FIXED_POINT else 1


def test_a_detect_chunk_through_the_device_path_matches_the_cpu_path(tmp_path):
    items = _items(tmp_path / "photos")
    allowed = AllowedSources.parse("", ((tmp_path / "photos").as_uri() + "/",))
    on_device = _processor(tmp_path, detect_device="cpu")
    assert on_device.device_detect is not None and on_device.device_detect.path.decoder.name == "cpu"
    cpu = _processor(tmp_path)
    assert cpu.device_detect is None
    ours = on_device._prepare_all(items, "detect", allowed)
    theirs = cpu._prepare_all(items, "detect", allowed)
    for item, mine, reference in zip(items, ours, theirs):
        assert type(mine) is type(reference), item.item_id
        if isinstance(reference, BadInputError):
            assert mine.code == reference.code, item.item_id
            continue
        assert isinstance(mine, PreparedImage) and mine.face_count == reference.face_count >= 1, item.item_id
        for a, b in zip(mine.faces, reference.faces):
            assert np.abs(a.pixels.astype(int) - b.pixels).max() <= PIXEL_TOLERANCE, item.item_id
            assert np.abs(np.subtract(a.bbox, b.bbox)).max() <= 0.5, item.item_id
    assert [o.face_count for o in ours[:3]] == [1, 1, 4]
    stages = on_device.cpu.totals()
    assert stages["fetch"] > 0 and stages["decode"] > 0 and stages["detect"] > 0
    on_device.close()
    cpu.close()
