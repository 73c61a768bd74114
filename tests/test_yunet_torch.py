"""The PyTorch YuNet against OpenCV's FaceDetectorYN on real photos (the CPU; a GPU run uses the same code)."""

import cv2
import numpy as np
import pytest
import torch

from faceq.errors import ModelError
from faceq.models.area_resize import resize_area
from faceq.models.detect import FaceDetector
from faceq.models.device_detect import DeviceFaceDetector
from faceq.models.yunet_decode import suppress
from faceq.models.yunet_torch import load_yunet
from tests.conftest import YUNET, needs_yunet
from tests.parity_photos import large_photo_bgr, parity_photos

pytestmark = needs_yunet

PHOTOS = parity_photos()


@pytest.fixture(scope="module")
def opencv() -> FaceDetector:
    return FaceDetector(str(YUNET))


@pytest.fixture(scope="module")
def ours() -> DeviceFaceDetector:
    return DeviceFaceDetector(str(YUNET), "cpu")


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)


def test_every_photo_gives_opencvs_faces_boxes_landmarks_and_scores(opencv, ours):
    names = list(PHOTOS)
    found = ours.detect([_tensor(PHOTOS[name]) for name in names])  # one call: batched where sizes agree
    for name, detections in zip(names, found):
        reference = opencv.detect(PHOTOS[name])
        assert len(detections) == len(reference) >= 1, name
        for mine, theirs in zip(detections, reference):
            assert np.abs(mine.bbox - theirs.bbox).max() <= 0.5, name
            assert np.abs(mine.landmarks - theirs.landmarks).max() <= 0.5, name
            assert abs(mine.score - theirs.score) <= 1e-3, name
    assert len(found[names.index("tiled")]) == 4


def test_a_photo_alone_or_beside_others_of_its_size_gives_the_same_faces(ours):
    photo = _tensor(PHOTOS["grace_hopper"])
    (alone,) = ours.detect([photo])
    beside = ours.detect([_tensor(PHOTOS["grace_hopper_mirrored"]), photo])[1]
    for a, b in zip(alone, beside):
        assert np.abs(a.landmarks - b.landmarks).max() <= 1e-3 and abs(a.score - b.score) <= 1e-5


def test_no_face_in_noise_or_black(ours):
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert ours.detect([_tensor(noise), _tensor(np.zeros((64, 64, 3), np.uint8))]) == [[], []]


@pytest.mark.parametrize("size", [(1280, 1024), (1200, 960), (800, 640), (333, 257)])
def test_the_search_resize_is_opencvs_inter_area(size):
    image = large_photo_bgr()
    height, width = size
    reference = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    mine = resize_area(_tensor(image)[None], height, width)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    difference = np.abs(mine.astype(int) - reference)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-4  # ±1 only at rounding ties


def test_suppression_is_opencvs_on_integer_boxes():
    rows = np.zeros((4, 15), dtype=np.float32)
    rows[:, :4] = [[10, 10, 100, 100], [12.9, 12.9, 100, 100], [300, 300, 50, 50], [10.5, 10.5, 99.9, 99.9]]
    rows[:, 14] = [0.8, 0.9, 0.75, 0.9]
    kept = suppress(torch.from_numpy(rows), 0.7, 0.3, 5000).numpy()
    # the two 0.9s tie: the earlier one wins (a stable sort); the 0.8 overlaps it; the far box stays
    assert kept[:, 14].tolist() == pytest.approx([0.9, 0.75]) and kept[0, 0] == pytest.approx(12.9)


def test_a_file_that_is_not_yunet_is_refused(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="not an ONNX file"):
        load_yunet(bogus)
