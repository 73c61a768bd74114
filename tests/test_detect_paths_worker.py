"""Detect mode's CPU paths through real worker processes: a worker on the coarse-to-fine path with
YuNet in ONNX Runtime (FACEQ_DETECT_PATH=coarse, the default engine) and one on the full path with
OpenCV's YuNet (the reference) run the same audit of large photos, a small one, a faceless one and
a damaged one. Each gives exactly one row per item without a face and one per face; the two agree on
every face (landmarks within 0.01 px, embeddings within cos 0.9999) and on every error."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from devstack.processes import RedisServer, free_port
from faceq.storage.store import open_storage
from tests.conftest import job_rows, needs_yunet, start_worker, worker_env
from tests.test_coarse_detect import PHOTOS, jpeg, upscaled
from tests.photos import astronaut_bgr

pytestmark = [pytest.mark.integration, needs_yunet]


def write_audit(folder: Path) -> dict[str, str]:
    """The photos, and what each item must come out as (``faces:N`` or a status)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    (folder / "astronaut-1920x2400.jpg").write_bytes(jpeg(PHOTOS["astronaut-1920x2400"]()))
    (folder / "four-faces-3000x2250.jpg").write_bytes(jpeg(PHOTOS["four-faces-3000x2250"]()))
    (folder / "small-face-4000x3000.jpg").write_bytes(jpeg(PHOTOS["small-face-4000x3000"]()))
    cv2.imwrite(str(folder / "astronaut-1920x2400.png"), upscaled(astronaut_bgr()[:, ::-1], 1920, 2400, seed=3))
    cv2.imwrite(str(folder / "portrait-512.png"), astronaut_bgr())  # too small to gain: the full path
    noise = cv2.GaussianBlur(rng.integers(0, 255, (2400, 1920, 3), dtype=np.uint8), (0, 0), 6)
    (folder / "no-face-1920x2400.jpg").write_bytes(jpeg(noise))
    (folder / "damaged.jpg").write_bytes(jpeg(PHOTOS["astronaut-1920x2400"]())[:3000])
    return {"astronaut-1920x2400.jpg": "faces:1", "four-faces-3000x2250.jpg": "faces:4",
            "small-face-4000x3000.jpg": "faces:1", "astronaut-1920x2400.png": "faces:1", "portrait-512.png": "faces:1",
            "no-face-1920x2400.jpg": "no_face", "damaged.jpg": "error"}


def stage_seconds(metrics: str) -> dict[str, float]:
    """The worker's ``faceq_stage_cpu_seconds_total`` by stage."""
    return {m[1]: float(m[2]) for m in re.finditer(r'faceq_stage_cpu_seconds_total\{stage="(\w+)"\} (\S+)', metrics)}


def run_audit(tmp_path: Path, folder: Path, name: str, **settings: str) -> dict[str, list[dict]]:
    storage_url = (tmp_path / f"store-{name}").as_uri()
    port = free_port()
    with RedisServer(tmp_path / f"redis-{name}") as redis_server:
        env = worker_env(redis_server.url, storage_url, FACEQ_CHUNK_SIZE="4", FACEQ_METRICS_PORT=str(port),
                         **settings)
        worker = start_worker(env, tmp_path, name)
        try:
            done = subprocess.run([sys.executable, "-m", "faceq.producer", "audit", str(folder), "--job-id", name,
                                   "--all-faces", "--wait", "--no-progress"], env=env, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, done.stderr
            stages = stage_seconds(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
            log = (tmp_path / f"{name}.log").read_text()
        finally:
            worker.stop()
    engine = settings.get("FACEQ_DETECT_ENGINE", "onnxruntime")
    assert f"detect={settings['FACEQ_DETECT_PATH']} path, YuNet in {engine}" in log
    coarse = settings["FACEQ_DETECT_PATH"] == "coarse"
    assert (stages.get("coarse_detect", 0) > 0 and stages.get("fine_detect", 0) > 0) == coarse, stages
    assert stages["detect"] > 0  # the small photo's full search (and nothing else on the coarse worker)
    by_item: dict[str, list[dict]] = {}
    for row in job_rows(open_storage(storage_url), name).to_pylist():
        by_item.setdefault(row["item_id"], []).append(row)
    return by_item


def test_the_coarse_onnxruntime_worker_gives_the_full_opencv_workers_rows(tmp_path):
    folder = tmp_path / "photos"
    expected = write_audit(folder)
    fast = run_audit(tmp_path, folder, "coarse-onnxruntime", FACEQ_DETECT_PATH="coarse")
    full = run_audit(tmp_path, folder, "full-opencv", FACEQ_DETECT_PATH="full", FACEQ_DETECT_ENGINE="opencv")
    for rows in (fast, full):
        assert set(rows) == set(expected)
        for item, want in expected.items():
            got = rows[item]
            if want.startswith("faces:"):
                faces = int(want.split(":")[1])
                assert [r["face_index"] for r in got] == list(range(faces)), item
                assert all(r["status"] == "ok" and r["face_count"] == faces for r in got), item
            else:
                assert [r["status"] for r in got] == [want], item  # exactly one row for the item
    assert fast["damaged.jpg"][0]["error"] == full["damaged.jpg"][0]["error"]
    for item in expected:
        for a, b in zip(full[item], fast[item]):
            if a["status"] != "ok":
                continue
            np.testing.assert_allclose(b["landmarks"], a["landmarks"], atol=0.01, err_msg=item)
            np.testing.assert_allclose(b["bbox"], a["bbox"], atol=0.01, err_msg=item)
            cos = float(np.dot(a["embedding"], b["embedding"]))
            assert cos >= 0.9999, (item, cos)
