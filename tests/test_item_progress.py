"""Progress counts items as they finish, not chunks (issue 26): a one-chunk job moves
between 0 and its total while the worker runs it, and ends with exactly one row per item."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from faceq.job.ledger import Ledger
from faceq.storage.store import open_storage
from devstack.samples import draw_face, encode
from tests.conftest import job_rows, redis_and_worker

pytestmark = pytest.mark.integration


def _photos(root: Path, n: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(3)
    for i in range(n):
        (root / f"face-{i:03d}.jpg").write_bytes(encode(draw_face(rng, 128), ".jpg"))
    return root


def test_a_single_chunk_job_shows_items_as_they_finish(tmp_path):
    n = 66
    (tmp_path / "photos").mkdir()
    photos = _photos(tmp_path / "photos", n)
    storage_url = (tmp_path / "store").as_uri()
    # the full-size network on the CPU, a few crops per batch: the one chunk takes seconds
    with redis_and_worker(tmp_path, "progress", storage_url, FACEQ_MODEL_ARCH="ir_se_64", FACEQ_MAX_BATCH="4",
                          FACEQ_CHUNK_SIZE="500", FACEQ_MODES="crop") as (env, _):
        submitted = subprocess.run([sys.executable, "-m", "faceq.producer", "audit", str(photos), "--job-id", "one-chunk",
                                    "--mode", "crop"], env=env, capture_output=True, text=True, timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        ledger = Ledger.from_url(env["FACEQ_BROKER_URL"])
        seen, deadline = set(), time.monotonic() + 300
        while time.monotonic() < deadline:
            progress = ledger.progress("one-chunk")
            assert progress.n_chunks == 1 and progress.n_items == n
            seen.add(progress.items_done)
            if progress.complete:
                break
            time.sleep(0.05)
        assert progress.complete and progress.items_done == n
        between = sorted(k for k in seen if 0 < k < n)
        assert between, f"progress only ever read {sorted(seen)}"
        assert not ledger.redis.exists("faceq:job:one-chunk:partial")  # the recorded chunk counts whole
        rows = job_rows(open_storage(storage_url), "one-chunk")
        assert rows.num_rows == n and len(set(rows.column("item_id").to_pylist())) == n


def test_chunk_progress_is_overwritten_and_dropped_once_the_chunk_is_recorded(redis_server):
    ledger = Ledger.from_url(redis_server.url)
    ledger.start("p", "run-1", "audit", n_chunks=2, n_items=20)
    assert ledger.chunk_progress("p", "run-1", 0, 4) and ledger.chunk_progress("p", "run-1", 1, 3)
    assert ledger.progress("p").items_done == 7
    assert ledger.chunk_progress("p", "run-1", 0, 2)  # a redelivery starts its count again: replaced, not added
    assert ledger.progress("p").items_done == 5
    ledger.record_chunk("p", "run-1", 0, {"n_items": 10})
    assert ledger.progress("p").items_done == 13
    assert not ledger.chunk_progress("p", "run-1", 0, 10)  # a late report of a recorded chunk: ignored
    assert not ledger.chunk_progress("p", "run-0", 1, 9)  # an older run's: ignored
    ledger.record_chunk("p", "run-1", 1, {"n_items": 10})
    ledger.record_chunk("p", "run-1", 1, {"n_items": 10})  # redelivered after recording: counted once
    assert ledger.progress("p").items_done == 20
