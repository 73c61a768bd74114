"""The benchmark runs unattended and prints every figure it promises (not a speed test)."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, YUNET

pytestmark = pytest.mark.integration


def test_bench_prints_one_json_document_with_every_figure():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--arch", "ir_se_tiny", "--batch-sizes", "1,4", "--min-seconds", "0.05",
         "--images", "24", "--jobs", "6", "--concurrency", "3", "--no-s3", "--one-to-n", "1000", "--probes", "512",
         "--skip-pipeline"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)["results"]["ir_se_tiny"]
    assert result["best_batch"] in (1, 4) and [row["batch"] for row in result["batch_sweep"]] == [1, 4]
    for key in ("bare_model_ips", "engine_ips", "per_image_ips", "microbatch_ips"):
        assert result[key] > 0, key
    assert result["e2e_ips"]["file"] > 0 and result["e2e"]["file"]["images"] == 24
    assert result["microbatch"]["device_batches"] >= 1
    assert set(result["ratios"]) == {"engine_over_bare", "e2e_file_over_bare", "microbatch_over_per_image"}
    (identification,) = json.loads(done.stdout)["one_to_n"]
    assert identification["identities"] == 1000 and identification["probes_per_second"] > 0
    assert identification["gallery_loads"] == 1  # resident: loaded once for every chunk


def test_the_pipeline_section_measures_every_run_beside_a_dataloader():
    """``python -m bench pipeline --quick``: the data-path figures of issue 11, small."""
    done = subprocess.run([sys.executable, "-m", "bench", "pipeline", "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    section = document["pipeline"]
    assert section["model"].startswith("FACEQ_MODEL_ARCH=null") and document["commit"]
    assert section["dataloader"]["ips"] > 0 and section["dataloader"]["images"] == 128
    runs = ["crop_file", "crop_s3"] + (["crop_file_one_core"] if shutil.which("taskset") else [])
    if YUNET.is_file():
        runs.append("detect")
    for key in runs:
        run = section[key]
        assert run["ips"] > 0 and run["worker_cpu_ms_per_item"] > 0 and run["cores_used"] > 0, key
        stages = run["stage_cpu_ms_per_item"]
        assert {"fetch", "decode", "rows", "write", "device", "other"} <= set(stages), key
        assert stages["fetch"] > 0 and stages["decode"] > 0, key
    assert section["detect" if YUNET.is_file() else "crop_file"]["stage_cpu_ms_per_item"][
        "detect" if YUNET.is_file() else "crop"] > 0
    assert "crop_file_over_dataloader" in section["targets"] and "crop_s3_worker_cpu_ms_per_item" in section["targets"]
    if YUNET.is_file():  # detect mode's coarse-to-fine path, beside the full one, with their parity
        coarse = section["detect_coarse"]
        assert coarse["detect_settings"] == {"FACEQ_DETECT_PATH": "coarse"}
        assert section["detect"]["detect_settings"] == {"FACEQ_DETECT_PATH": "full"}
        assert section["detect_opencv"]["detect_settings"]["FACEQ_DETECT_ENGINE"] == "opencv"
        assert section["detect_coarse_min_face"]["detect_settings"]["FACEQ_DETECT_COARSE_MIN_FACE"] == "160"
        for key in ("detect_opencv", "detect_coarse_min_face"):
            assert section[key]["ips"] > 0 and section[key]["stage_cpu_ms_per_item"]["decode"] > 0, key
        assert coarse["ips"] > 0 and coarse["stage_cpu_ms_per_item"]["coarse_detect"] > 0
        same = section["detect_parity"]
        assert same["faces_found"]["coarse"] == same["faces_found"]["full"] == 2
        assert same["min_embedding_cosine"] >= 0.9999 and same["max_landmark_px"] <= 0.01


@pytest.mark.skipif(not YUNET.is_file(), reason=f"YuNet weights not found at {YUNET}")
def test_the_gpu_smoke_runs_a_crop_and_a_detect_job_on_the_cpu():
    """``python -m bench gpu --device cpu --quick``: the GPU host's unattended smoke, on the CPU path."""
    done = subprocess.run([sys.executable, "-m", "bench", "gpu", "--device", "cpu", "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["ok"] and "error" not in document
    for mode in ("eager", "fused"):  # BatchNorm folded beside the network as loaded
        assert document["bare_model"]["fp32"][mode]["bare_model_ips"] > 0, mode
    assert document["dataloader"]["ips"] > 0 and document["dataloader"]["images"] == 256
    for mode, n in (("crop", 256), ("detect", 6)):
        job = document["jobs"][mode]
        assert job["images"] == n and job["rows"] == n and job["ips"] > 0, mode  # one row per item, checked inside
        assert job["first_chunks_seconds"] and job["steady_chunk_seconds_median"] > 0, mode
        assert job["gpu_busy_fraction"] is None, mode  # no NVML on the CPU
    assert document["jobs"]["crop"]["chunks"] == 8 and document["jobs"]["crop"]["status"] == {"ok": 256}
    assert document["warm_memory_bytes"] is None  # the CPU has no warm GPU memory
    device_detect = document["device_detect"]  # the device detect path, run on the CPU here
    assert device_detect["decoder"] == "cpu" and device_detect["photos_per_second"] > 0
    assert {"decode", "detect", "align", "process"} <= set(device_detect["cpu_ms_per_photo"])
    parity = device_detect["parity"]
    assert parity["faces"] == 4 and parity["face_count_differences"] == 0 and parity["max_landmark_px"] <= 0.5
    assert parity["max_crop_pixel"] <= 1 and parity["min_embedding_cosine"] >= 0.9999


@pytest.mark.skipif(not YUNET.is_file(), reason=f"YuNet weights not found at {YUNET}")
def test_the_gpu_smoke_exits_non_zero_at_once_when_a_job_fails(tmp_path):
    """A worker that reads another storage than the producer wrote: every chunk fails for good.
    The smoke says so within seconds (it once waited 240 s on a job that had already failed)."""
    elsewhere = (tmp_path / "another-store").as_uri()
    done = subprocess.run([sys.executable, "-m", "bench", "gpu", "--device", "cpu", "--quick", "--crops", "64",
                           "--env", f"FACEQ_STORAGE_URL={elsewhere}", "--stall-seconds", "60", "--timeout", "120"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert not document["ok"] and "cannot complete" in document["error"] and "no such object" in document["error"]
    assert "gpu-smoke-crop" in document["error"] and "jobs" in document and "crop" not in document["jobs"]
    assert done.stderr.strip().splitlines()[-1].startswith("bench gpu: FAILED: ")
