"""Everyday use (issue 26): one-line errors, early; commands people type; numbers that read right."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time

import pytest

from faceq.queue.broker import check_broker_url
from faceq.errors import ConfigError
from faceq.outputs.guidance import explain
from faceq.queue.heartbeats import heartbeat_key
from faceq.job.ledger import JobProgress, Ledger
from faceq.storage.store import canonical_storage_url
from faceq.outputs.review_queue import _fmt
from faceq.producer.tables import jobs_table, status_lines
from faceq.producer.workermodes import mode_refusal
from tests.conftest import worker_env


def faceq(*args: str, env: dict | None = None, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "faceq.producer", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {}), **extra})


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.fixture
def db5(redis_server) -> str:
    """A database of the session's Redis that no worker uses (fake heartbeats stay here)."""
    url = redis_server.url[:-1] + "5"
    client = redis_server.client()
    client.execute_command("SELECT", 5)
    client.flushdb()
    return url


# -- one line, early -----------------------------------------------------------------------

@pytest.mark.parametrize("command", [("status", "x"), ("jobs",), ("audit", "/tmp")])
def test_a_broker_url_of_another_scheme_is_one_line(command, tmp_path):
    done = faceq(*command, FACEQ_BROKER_URL="http://127.0.0.1:6379/0", FACEQ_STORAGE_URL=tmp_path.as_uri())
    assert done.returncode == 1 and "starts with redis://, rediss:// or unix://" in one_line(done)


def test_a_database_redis_does_not_have_is_one_line(redis_server, tmp_path):
    bad = redis_server.url[:-1] + "99"
    for command in (("status", "x"), ("jobs",), ("audit", str(tmp_path))):
        done = faceq(*command, FACEQ_BROKER_URL=bad, FACEQ_STORAGE_URL=tmp_path.as_uri())
        assert done.returncode == 1 and "has no database 99" in one_line(done), command


def test_broker_urls_are_checked_before_redis_py_sees_them():
    for url in ("http://h:1/0", "redis://h:6379/zero", "amqp://guest@h//"):
        with pytest.raises(ConfigError):
            check_broker_url(url)
    check_broker_url("redis://:secret@h:6379/3")
    check_broker_url("unix:///run/redis.sock?db=2")


@pytest.mark.parametrize("suffix, message", [("99", "has no database 99"), (None, "starts with redis://")])
def test_a_worker_with_a_wrong_broker_stops_in_one_line_before_the_model(redis_server, tmp_path, suffix, message):
    url = redis_server.url[:-1] + suffix if suffix else "http://127.0.0.1:6379/0"
    # weights that do not exist: a worker that got as far as the model would say so instead
    env = worker_env(url, tmp_path.as_uri(), FACEQ_MODEL_WEIGHTS="/nonexistent/pytorch_model.pt")
    done = subprocess.run([sys.executable, "-m", "faceq.workers", "--device", "cpu"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr and "/nonexistent/" not in done.stderr


def test_a_mistyped_command_gets_a_suggestion():
    done = faceq("stauts", "job-1")
    assert done.returncode == 2 and "did you mean 'status'?" in one_line(done)


def test_two_slashes_in_a_file_url_are_named(redis_server):
    done = faceq("jobs", FACEQ_BROKER_URL=redis_server.url, FACEQ_STORAGE_URL="file://tmp/x")
    assert done.returncode == 1 and "three slashes, file:///tmp/x" in one_line(done)


def test_report_of_an_unknown_job_says_there_is_no_such_job(redis_server, tmp_path):
    done = faceq("report", "no-such-job", FACEQ_BROKER_URL=redis_server.url, FACEQ_STORAGE_URL=tmp_path.as_uri())
    assert done.returncode == 1 and "no job 'no-such-job'" in one_line(done)


@pytest.mark.parametrize("command", [("report", "job-1"), ("status", "job-1")])
def test_reading_commands_give_up_on_unreachable_s3_within_seconds(redis_server, command):
    started = time.monotonic()
    done = faceq(*command, FACEQ_BROKER_URL=redis_server.url, FACEQ_STORAGE_URL="s3://bucket/prefix",
                 FACEQ_S3_ENDPOINT_URL="http://127.0.0.1:1", timeout=120)
    assert done.returncode == 1 and "Could not connect" in one_line(done)
    assert time.monotonic() - started < 30


def test_a_detect_job_is_refused_when_every_live_worker_serves_only_crop(db5, tmp_path):
    store = tmp_path / "store"
    beat = {"worker": "faceq-cpu@host", "modes": ["crop"], "storage": canonical_storage_url(store.as_uri())}
    client = Ledger.from_url(db5).redis
    client.set(heartbeat_key("faceq-cpu@host"), json.dumps(beat), ex=60)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    done = faceq("audit", str(tmp_path / "photos"), FACEQ_BROKER_URL=db5, FACEQ_STORAGE_URL=store.as_uri())
    line = one_line(done)
    assert done.returncode == 1 and "no live worker serves detect mode" in line
    assert "FACEQ_MODES=crop,detect" in line and "--mode crop" in line
    assert not any(store.glob("jobs/*")), "refused before anything is written"


def test_mode_refusal_only_when_no_live_worker_serves_the_mode():
    assert mode_refusal("detect", []) is None  # no worker yet: the job waits for one
    assert mode_refusal("detect", [{"modes": ["crop"]}, {"modes": ["crop", "detect"]}]) is None
    assert mode_refusal("crop", [{"worker": "w"}]) is None  # an older worker without `modes` serves both
    assert "FACEQ_MODES=crop" in mode_refusal("crop", [{"worker": "w", "modes": ["detect"]}])


# -- commands people type ------------------------------------------------------------------

def _progress(job_id: str, done: int, n: int, **extra) -> JobProgress:
    now = time.time()
    fields = dict(job_id=job_id, run_id="r", kind="audit", state="running", n_chunks=2, n_items=n, chunks_done=1,
                  items_done=done, errors=1, flagged=2, failed={}, created_at=now - 125, finished_at=None)
    return JobProgress(**{**fields, **extra})


def test_jobs_prints_a_table_for_people():
    table = jobs_table([_progress("nightly-1", 40, 66), _progress("old", 66, 66, state="done",
                                                                   created_at=time.time() - 3 * 86400)])
    lines = table.splitlines()
    assert lines[0].split() == ["JOB", "KIND", "STATE", "PROGRESS", "ERRORS", "FLAGGED", "AGE"]
    assert lines[1].split() == ["nightly-1", "audit", "running", "40/66", "items", "(60%)", "1", "2", "2m"]
    assert lines[2].split()[2] == "done" and lines[2].endswith("3d")


def test_status_prints_a_few_lines_for_people():
    summary = {"n_rows": 6, "n_items": 6, "counts": {"status": {"ok": 5, "error": 1}, "needs_review": 1},
               "outputs": {"results": "r/", "review": "review.csv", "report": "report.html"}}
    lines = status_lines("j", _progress("j", 6, 6, state="done", finished_at=time.time()), summary,
                         lambda key: f"file:///store/{key}")
    text = "\n".join(lines)
    assert "state:      done (audit)" in text and "6/6 items (100%)" in text and "1 errors, 2 flagged" in text
    assert "file:///store/review.csv" in text and "--json" in text and len(lines) < 15


def test_one_off_jobs_are_hidden_from_listings_unless_asked(db5):
    ledger = Ledger.from_url(db5)
    ledger.start("nightly", "r1", "audit", 1, 3)
    ledger.start("compare-once", "r2", "compare", 1, 1, hidden=True)
    assert [p.job_id for p in ledger.recent_jobs(10, include_hidden=False)] == ["nightly"]
    assert {p.job_id for p in ledger.recent_jobs(10)} == {"nightly", "compare-once"}
    assert [p.job_id for p in ledger.recent_jobs(1, include_hidden=False)] == ["nightly"]


def test_client_takes_broker_and_storage_directly(redis_server, tmp_path):
    from faceq import Client

    client = Client(broker=redis_server.url, storage=tmp_path.as_uri())
    assert client.settings.broker_url == redis_server.url and client.storage.url.startswith("file://")


# -- numbers that read right -----------------------------------------------------------------

def test_review_csv_keeps_numbers_numeric():
    from faceq.outputs.csvsafe import inert_cell

    out = io.StringIO()
    csv.writer(out).writerow([inert_cell(_fmt(v)) for v in (-0.178312, 0.5, 3, "-2+3", None)])
    assert out.getvalue().strip() == "-0.1783,0.5,3,'-2+3,"


def test_an_audit_no_face_is_not_told_to_face_the_camera():
    _, action = explain({"status": "no_face", "review_reasons": ["no_face"], "quality": None}, None)
    assert "facing the camera" not in action and "replace" in action
    _, attendance = explain({"status": "no_face", "review_reasons": ["no_face"], "quality": None}, "attendance")
    assert "facing the camera" in attendance
