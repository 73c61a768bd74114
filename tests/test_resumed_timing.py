"""A resumed job's items/s is timed over the time its chunks ran, not since its first,
failed submission (issue 26)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from datetime import datetime, timezone

from faceq.job import spec as jobs
from faceq.job.spec import JobHeader
from faceq.outputs.results import ItemResult, chunk_part_bytes
from faceq.settings import TrustThresholds
from faceq.storage.store import open_storage
from faceq.outputs.summary import finalize, running_seconds


def test_running_seconds_merge_overlapping_chunks_and_skip_pauses():
    assert running_seconds([(0, 10), (5, 12), (100, 104)]) == 16
    assert running_seconds([(3, 4), (0, 10)]) == 10
    assert running_seconds([]) == 0


def test_a_job_resumed_a_day_later_reports_the_rate_of_its_runs(tmp_path):
    storage = open_storage(tmp_path.as_uri())
    day = 86400.0
    submitted = datetime(2026, 12, 1, tzinfo=timezone.utc)
    header = JobHeader("resumed", "r1", "audit", "crop", "/photos", submitted.isoformat(), chunk_size=10, n_items=20)
    storage.put_bytes(jobs.header_key("resumed", "r1"), header.to_json())
    t0 = submitted.timestamp()
    # chunk 0 ran on the first day (5 s); chunk 1 only after the resume, a day later (5 s)
    for index, finished in ((0, t0 + 10), (1, t0 + day + 10)):
        rows = [ItemResult(f"{index}-{k}.jpg", f"file:///photos/{index}-{k}.jpg", "error", "m",
                           submitted, error="unreadable: test") for k in range(10)]
        stats = {"n_items": 10, "seconds": 5.0, "finished_at": finished, "worker": "w"}
        storage.put_bytes(jobs.part_key("resumed", "r1", index), chunk_part_bytes(rows, header, stats))
    summary = finalize(storage, header, TrustThresholds(), lock=lambda gallery: nullcontext())
    assert summary["timings"]["running_seconds"] == 10.0
    assert summary["timings"]["items_per_second"] == 2.0
    assert summary["timings"]["wall_seconds"] > day
    report = storage.get_bytes(summary["outputs"]["report"]).decode()
    assert "2.0 items/s" in report
    assert json.loads(storage.get_bytes(jobs.summary_key("resumed")))["timings"]["items_per_second"] == 2.0
