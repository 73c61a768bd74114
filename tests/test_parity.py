"""faceq gives the reference implementation's numbers (ModelScope RTSBackbone + pipeline).

The reference is imported from the `modelscope` package (a test-only dependency) and fed the
same state dict — random weights and randomised BatchNorm statistics, so BN is not the
identity — and the same images. Its detector needs a download, so both sides get the same
detections (box, five landmarks, score) and each applies its own face choice and alignment.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from bench.precision import randomise_batchnorm
from faceq.models.align import align_face
from faceq.models.detect import Detection, usable_faces
from faceq.models.preprocess import crop_face, decode_image
from faceq.models.weights import LoadedModel, load_model
from devstack.samples import draw_face
from tests.photos import astronaut_bgr, two_people_bgr
from faceq.workers.engine import Engine

modelscope = pytest.importorskip("modelscope", reason="the reference implementation (pip install modelscope)")

from modelscope.models.cv.face_recognition.torchkit.rts_backbone import RTSBackbone  # noqa: E402
from modelscope.outputs import OutputKeys  # noqa: E402
from modelscope.pipelines.cv.face_processing_base_pipeline import FaceProcessingBasePipeline  # noqa: E402
from modelscope.pipelines.cv.face_recognition_ood_pipeline import FaceRecognitionOodPipeline  # noqa: E402
from modelscope.preprocessors import LoadImage  # noqa: E402

# Five landmarks of the astronaut's face (image-left eye first), as YuNet reports them.
ASTRONAUT_FACE = Detection(
    bbox=np.array([178.2, 62.9, 268.1, 176.2], dtype=np.float32),
    landmarks=np.array([[200.1, 101.8], [247.1, 102.6], [220.4, 124.5], [198.6, 142.8], [239.7, 143.6]],
                       dtype=np.float32),
    score=0.9,
)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return randomise_batchnorm(load_model(None, "ir_se_64", seed=123).model, seed=7).state_dict()


@pytest.fixture(scope="module")
def engine(state_dict) -> Engine:
    model = load_model(None, "ir_se_64").model
    model.load_state_dict(state_dict)
    return Engine(LoadedModel(model, "parity", random_weights=True), "cpu", "fp32", max_batch=8)


@pytest.fixture(scope="module")
def reference(state_dict) -> FaceRecognitionOodPipeline:
    backbone = RTSBackbone(alpha=16, rts_plus=False)
    backbone.load_state_dict(state_dict, strict=True)  # our layout is theirs, key for key
    pipeline = FaceRecognitionOodPipeline.__new__(FaceRecognitionOodPipeline)  # no hub download
    pipeline.face_model = backbone.eval()
    pipeline.use_det = False
    return pipeline


def _reference_outputs(pipeline, image_bgr: np.ndarray) -> tuple[np.ndarray, float]:
    prepared = pipeline.preprocess(image_bgr)
    with torch.no_grad():
        out = pipeline.forward({"img": torch.from_numpy(prepared["img"])})
    return out[OutputKeys.IMG_EMBEDDING][0], out[OutputKeys.SCORES][0][0]


def _assert_same_numbers(ours: tuple[np.ndarray, np.ndarray], theirs: list[tuple[np.ndarray, float]]) -> None:
    embeddings, scores = ours
    for k, (embedding, score) in enumerate(theirs):
        cosine = float(embeddings[k] @ embedding / np.linalg.norm(embedding))
        assert cosine >= 0.9999, f"image {k}: cosine {cosine}"
        assert abs(float(scores[k]) - score) <= 1e-3, f"image {k}: score {scores[k]} vs {score}"


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [astronaut_bgr(), draw_face(rng, 112), draw_face(rng, 173), rng.integers(0, 256, (90, 140, 3), np.uint8)]


def test_crop_mode_matches_the_reference(engine, reference):
    images = _images()
    ours = engine.infer(np.stack([crop_face(image).faces[0].pixels for image in images]))
    _assert_same_numbers(ours, [_reference_outputs(reference, image) for image in images])


@pytest.mark.parametrize(
    "detections",
    [
        [ASTRONAUT_FACE],
        # a larger face, a smaller one, and one under 10 px: both sides must pick the same face
        [Detection(ASTRONAUT_FACE.bbox * 0.6 + [512, 0, 512, 0], ASTRONAUT_FACE.landmarks * 0.6 + [512, 0], 0.95),
         ASTRONAUT_FACE,
         Detection(np.array([5, 5, 12, 40], dtype=np.float32), ASTRONAUT_FACE.landmarks * 0.05, 0.99)],
    ],
    ids=["one-face", "three-faces"],
)
def test_aligned_mode_matches_the_reference(engine, reference, detections):
    image = astronaut_bgr() if len(detections) == 1 else two_people_bgr()
    reference_detector = {
        OutputKeys.BOXES: [d.bbox for d in detections],
        OutputKeys.KEYPOINTS: [d.landmarks.reshape(-1) for d in detections],
        OutputKeys.SCORES: [d.score for d in detections],
    }
    reference.use_det = True
    reference.face_detection = lambda _image: reference_detector
    try:
        reference_crop = FaceProcessingBasePipeline.preprocess(reference, image)["img"]
        reference_numbers = _reference_outputs(reference, image)
    finally:
        reference.use_det = False
    chosen = usable_faces(detections)[0]
    our_crop = align_face(image, chosen.landmarks)
    difference = np.abs(our_crop.astype(int) - reference_crop.astype(int))
    assert difference.mean() < 0.05 and difference.max() <= 2  # float32 vs float64 transform estimate
    _assert_same_numbers(engine.infer(our_crop[None]), [reference_numbers])


def test_batch_invariance_alone_or_in_a_batch_of_64(engine):
    crops = np.random.default_rng(3).integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
    crops[17] = crop_face(astronaut_bgr()).faces[0].pixels
    engine_64 = Engine(LoadedModel(engine.model, "parity", True), "cpu", "fp32", max_batch=64)
    batch_embeddings, batch_scores = engine_64.infer(crops)
    for i in (0, 17, 63):
        alone_embedding, alone_score = engine_64.infer(crops[i : i + 1])
        assert np.abs(alone_embedding[0] - batch_embeddings[i]).max() <= 1e-5
        assert abs(float(alone_score[0]) - float(batch_scores[i])) <= 1e-5 * max(1.0, abs(float(batch_scores[i])))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "EXIF-rotated JPEG"])
def test_decoding_matches_the_reference_loader(tmp_path, fmt):
    from PIL import Image

    image = Image.fromarray(astronaut_bgr()[:, :, ::-1])
    options = {"format": "JPEG", "quality": 90} if fmt != "PNG" else {"format": "PNG"}
    if fmt.startswith("EXIF"):
        exif = Image.Exif()
        exif[0x0112] = 6
        options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, **options)
    path = tmp_path / "photo"
    path.write_bytes(buffer.getvalue())
    theirs = np.asarray(LoadImage()(str(path))["img"])  # RGB
    ours = decode_image(buffer.getvalue(), max_bytes=1 << 30, max_pixels=1 << 30)
    assert np.array_equal(ours[:, :, ::-1], theirs)
