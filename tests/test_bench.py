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
