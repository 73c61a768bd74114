"""Detection and alignment on real photos with YuNet, and the reference's face choice rule."""

import numpy as np
import pytest

from faceq.errors import ModelError
from faceq.models.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from faceq.models.detect import Detection, FaceDetector, usable_faces
from faceq.models.preprocess import detect_faces
from tests.conftest import YUNET, needs_yunet
from tests.photos import astronaut_bgr, cat_bgr, two_people_bgr


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    if not YUNET.is_file():
        pytest.skip(f"YuNet weights not found at {YUNET} (test data beside the checkout)")
    return FaceDetector(str(YUNET))


def _detection(x1, y1, x2, y2):
    return Detection(np.array([x1, y1, x2, y2], dtype=np.float32), np.zeros((5, 2), dtype=np.float32), 0.9)


def test_faces_under_ten_pixels_are_ignored_and_the_largest_comes_first():
    faces = usable_faces([_detection(0, 0, 9, 40), _detection(0, 0, 20, 20), _detection(0, 0, 30, 30),
                          _detection(0, 0, 40, 9.5)])
    assert [f.width for f in faces] == [30, 20]
    assert usable_faces([_detection(0, 0, 10, 10)], min_size=10)[0].width == 10


@needs_yunet
def test_a_portrait_has_exactly_one_face_with_a_sensible_box(detector):
    image = astronaut_bgr()
    (face,) = usable_faces(detector.detect(image))
    x1, y1, x2, y2 = face.bbox
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 220  # the face in the upper left of the 512×512 photo
    assert 60 < face.width < 150 and 80 < face.height < 160
    assert face.score > 0.8
    eyes, nose, mouth = face.landmarks[:2], face.landmarks[2], face.landmarks[3:]
    assert eyes[0][0] < eyes[1][0]  # image-left eye first, as in the ArcFace template
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
    assert ((face.landmarks >= [x1, y1]) & (face.landmarks <= [x2, y2])).all()


@needs_yunet
def test_the_cat_has_no_face(detector):
    prepared = detect_faces(cat_bgr(), detector)
    assert prepared.faces == [] and prepared.face_count == 0


@needs_yunet
def test_two_faces_are_both_found_largest_first(detector):
    prepared = detect_faces(two_people_bgr(), detector)
    assert prepared.face_count == 2
    first, second = prepared.faces
    assert first.bbox[0] < 512 <= second.bbox[0]
    assert (first.bbox[2] - first.bbox[0]) > (second.bbox[2] - second.bbox[0])


@needs_yunet
def test_large_photos_are_searched_downscaled_and_mapped_back(detector):
    import cv2

    image = astronaut_bgr()
    (reference,) = usable_faces(detector.detect(image))
    big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    small_search = FaceDetector(str(YUNET), max_side=512)
    (face,) = usable_faces(small_search.detect(big))
    np.testing.assert_allclose(face.bbox, reference.bbox * 4, atol=12)
    np.testing.assert_allclose(face.landmarks, reference.landmarks * 4, atol=12)


@needs_yunet
def test_alignment_puts_the_landmarks_on_the_arcface_template(detector):
    image = astronaut_bgr()
    (face,) = usable_faces(detector.detect(image))
    matrix = similarity_transform(face.landmarks, ARCFACE_TEMPLATE)
    moved = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(moved - ARCFACE_TEMPLATE).max() < 6  # five points, four degrees of freedom
    crop = align_face(image, face.landmarks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    assert crop.mean() > 40  # the face fills the crop, not the black border


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE.astype(np.float64)
    dst = src @ rotation.T + shift
    np.testing.assert_allclose(similarity_transform(src, dst), np.hstack([rotation, shift[:, None]]), atol=1e-9)


def test_missing_or_invalid_detector_weights_say_where_to_get_yunet(tmp_path):
    with pytest.raises(ModelError, match="no such file.*faceq models fetch --only detector.*opencv_zoo"):
        FaceDetector(str(tmp_path / "absent.onnx"))
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="not a YuNet model OpenCV can load"):
        FaceDetector(str(bogus))
