"""The benchmark runs unattended and prints every figure it promises (not a speed test)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_bench_prints_one_json_document_with_every_figure():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--arch", "ir_se_tiny", "--batch-sizes", "1,4", "--min-seconds", "0.05",
         "--images", "24", "--jobs", "6", "--concurrency", "3", "--no-s3", "--one-to-n", "1000", "--probes", "512"],
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
