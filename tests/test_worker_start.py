"""A worker that cannot serve refuses to start, with the reason, before touching the broker."""

import subprocess
import sys

import pytest

from tests.conftest import not_yunet_onnx, worker_env


@pytest.mark.parametrize(
    ("extra", "device", "message"),
    [
        ({"FACEQ_MODEL_WEIGHTS": "/nonexistent/pytorch_model.pt"}, "cpu", "FACEQ_MODEL_WEIGHTS=/nonexistent/"),
        ({"FACEQ_PRECISION": "fp64"}, "cpu", "choose auto, fp32, fp16 or bf16"),
        ({"FACEQ_MODES": "crop,detect", "FACEQ_DETECTOR_WEIGHTS": ""}, "cpu", "`faceq models fetch --only detector`"),
        ({"FACEQ_MODEL_ARCH": "resnet9000"}, "cpu", "unknown architecture"),
    ],
)
def test_worker_exits_with_the_reason(tmp_path, extra, device, message):
    # an unreachable broker: the worker must fail on the model before it ever connects
    env = worker_env("redis://127.0.0.1:1/0", tmp_path.as_uri(), **extra)
    done = subprocess.run([sys.executable, "-m", "faceq.workers", "--device", device], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "faceq worker cannot start" in done.stderr and message in done.stderr


@pytest.mark.parametrize(("engine", "message"), [
    ("onnxruntime", "is not YuNet 2023mar: no outputs"),
    ("opencv", "is not a YuNet model OpenCV can run"),
    ("tensorrt", "FACEQ_DETECT_ENGINE='tensorrt': choose one of onnxruntime, opencv"),
])
def test_a_detector_file_that_is_not_yunet_stops_the_worker_in_one_line(tmp_path, engine, message):
    """Another ONNX network loads in ONNX Runtime: refused at start, not as an error row per photo."""
    other = not_yunet_onnx(tmp_path)
    env = worker_env("redis://127.0.0.1:1/0", tmp_path.as_uri(), FACEQ_MODES="crop,detect",
                     FACEQ_DETECTOR_WEIGHTS=str(other), FACEQ_DETECT_ENGINE=engine)
    done = subprocess.run([sys.executable, "-m", "faceq.workers", "--device", "cpu"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if "faceq worker cannot start" in line]
    assert message in line
