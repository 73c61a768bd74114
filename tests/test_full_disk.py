"""A file:// store that fills up mid-job: writes wait for space (ENOSPC often clears) and never
leave temp files behind. Real processes on a real full filesystem (a 4 MB tmpfs; needs root to
mount, as CI has)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.processes import RedisServer
from faceq.errors import StorageError
from faceq.storage.store import open_storage
from devstack.samples import write_sample_set
from tests.conftest import job_rows, start_worker, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path) -> Path:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; → the file that holds the space."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 1):  # big writes, then what is left of the last pages
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def test_a_failed_write_leaves_no_temp_file_and_says_the_disk_is_full(small_disk):
    storage = open_storage(small_disk.as_uri(), retry_seconds=0)
    _fill(small_disk)
    with pytest.raises(StorageError, match="No space left on device") as raised:
        storage.put_bytes("jobs/j/runs/r/results/part-00000.parquet", b"x" * 200_000)
    assert raised.value.transient
    assert _temp_files(small_disk) == []


def test_a_job_waits_for_disk_space_and_completes_with_one_row_per_item(small_disk, tmp_path):
    samples = tmp_path / "samples"
    expected = write_sample_set(samples, n_good=26)  # 32 items: 4 chunks of 8
    with RedisServer(tmp_path / "redis") as redis_server:
        env = worker_env(redis_server.url, small_disk.as_uri(), None, FACEQ_CHUNK_SIZE="8",
                         FACEQ_STORAGE_RETRY_SECONDS="120")
        submitted = subprocess.run([sys.executable, "-m", "faceq.producer", "audit", str(samples), "--job-id", "full-disk",
                                    "--mode", "crop", "--no-progress"], env=env, capture_output=True, text=True,
                                   timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        filler = _fill(small_disk)  # the plan is written; there is no room left for any part
        worker = start_worker(env, tmp_path, "full-disk-worker")
        try:
            deadline = time.monotonic() + 60
            while "No space left on device" not in worker.log_text():
                assert time.monotonic() < deadline, worker.log_tail(30)
                time.sleep(0.1)
            filler.unlink()  # a cleanup job frees space
            done = subprocess.run([sys.executable, "-m", "faceq.producer", "wait", "full-disk", "--no-progress",
                                   "--timeout", "120"], env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout + done.stderr + worker.log_tail(30)
            rows = job_rows(open_storage(small_disk.as_uri()), "full-disk")
            ids = rows.column("item_id").to_pylist()
            assert sorted(ids) == sorted(expected) and len(ids) == len(expected)  # exactly one row per item
            assert _temp_files(small_disk) == [], _temp_files(small_disk)
            assert worker.alive()
        finally:
            worker.stop()
