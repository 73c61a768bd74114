"""A worker that cannot serve refuses to start, with the reason, before touching the broker."""

import subprocess
import sys

import pytest

from tests.conftest import worker_env


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
