"""Alignment on the device (grid_sample) against cv2.warpAffine, and the embeddings of both crops."""

import numpy as np
import pytest
import torch

from bench.precision import randomise_batchnorm
from faceq.models.align import align_face
from faceq.models.detect import FaceDetector
from faceq.models.device_align import align_into
from faceq.models.weights import LoadedModel, load_model
from tests.conftest import YUNET, needs_yunet
from tests.parity_photos import parity_photos
from faceq.workers.engine import Engine

pytestmark = needs_yunet


@pytest.fixture(scope="module")
def faces() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(photo name, photo, landmarks (F, 5, 2)) as the CPU detector finds them."""
    detector = FaceDetector(str(YUNET))
    found = []
    for name, photo in parity_photos().items():
        landmarks = np.stack([d.landmarks for d in detector.detect(photo)])
        found.append((name, photo, landmarks))
    return found


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The seeded random-weight IR-SE-64 of the parity tests, BatchNorm statistics randomised."""
    model = randomise_batchnorm(load_model(None, "ir_se_64", seed=123).model, seed=7)
    return Engine(LoadedModel(model, "device-align", random_weights=True), "cpu", "fp32", max_batch=8)


def _device_crops(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    out = torch.empty((len(landmarks), 112, 112, 3), dtype=torch.uint8)
    align_into(torch.from_numpy(photo).permute(2, 0, 1), landmarks, out)
    return out.numpy()


def test_grid_sample_crops_are_warp_affines_within_one_level(faces):
    for name, photo, landmarks in faces:
        crops = _device_crops(photo, landmarks)
        for crop, points in zip(crops, landmarks):
            difference = np.abs(crop.astype(int) - align_face(photo, points))
            assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, name
    assert len(faces) == 6


def test_faces_reaching_past_the_border_are_black_there_as_in_opencv(faces):
    _, photo, landmarks = faces[0]
    shifted = landmarks - [landmarks[0, :, 0].min() + 30, 0]  # the face half outside the left edge
    (crop,) = _device_crops(photo, shifted)
    reference = align_face(photo, shifted[0])
    assert (reference == 0).mean() > 0.1
    assert np.abs(crop.astype(int) - reference).max() <= 1


def test_embeddings_of_device_crops_match_the_cpu_crops(faces, engine):
    device_crops, cpu_crops = [], []
    for _, photo, landmarks in faces:
        device_crops.extend(_device_crops(photo, landmarks))
        cpu_crops.extend(align_face(photo, points) for points in landmarks)
    ours, _ = engine.infer(np.stack(device_crops))
    theirs, _ = engine.infer(np.stack(cpu_crops))
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
