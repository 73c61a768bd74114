"""The Python client and the ``faceq`` command against a real redis-server and worker process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from faceq import Client
from devstack.processes import RedisServer
from faceq.errors import ConfigError, JobError
from devstack.samples import write_sample_set
from tests.conftest import assert_embedding_ok, redis_and_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client")
    with redis_and_worker(tmp, "client-worker", (tmp / "store").as_uri()) as (env, _):
        yield env, tmp


@pytest.fixture(scope="module")
def client(stack) -> Client:
    env, _ = stack
    return Client.from_env(broker=env["FACEQ_BROKER_URL"], storage=env["FACEQ_STORAGE_URL"])


@pytest.fixture(scope="module")
def samples(stack) -> tuple[Path, dict[str, str]]:
    _, tmp = stack
    return tmp / "samples", write_sample_set(tmp / "samples", n_good=10)


def test_audit_wait_results_and_review(client, samples):
    root, expected = samples
    job = client.audit(root, mode="crop", job_id="client-audit")
    summary = job.wait(timeout=120)
    table = job.results()
    assert summary["n_items"] == table.num_rows == len(expected)
    assert set(table.column("job_id").to_pylist()) == {"client-audit"}
    assert sorted(table.column("item_id").to_pylist()) == sorted(expected)
    flagged = {row["item_id"] for row in job.review()}
    assert flagged == {k for k, v in expected.items() if v != "ok"}
    assert "client-audit" in [p.job_id for p in client.jobs()]
    assert client.job("client-audit").summary["run_id"] == summary["run_id"]


def test_enrol_rows_then_verify_one_photo(client, samples, monkeypatch):
    root, expected = samples
    good = sorted(k for k, v in expected.items() if v == "ok")
    monkeypatch.chdir(root)  # rows from Python may name images relative to the working directory
    enrolment = client.enroll([{"employee_id": f"e{i}", "image": name} for i, name in enumerate(good[:4])],
                              gallery="client-staff")
    enrolment.wait(timeout=120)
    assert client.galleries()["client-staff"] == [1]
    row = client.verify(root / good[0], employee_id="e0", gallery="client-staff", timeout=120)
    assert row["employee_id"] == "e0" and row["gallery"] == "client-staff@v1" and row["status"] == "ok"
    assert row["decision"] and row["similarity"] == pytest.approx(1.0, abs=1e-3)  # the enrolment photo itself
    raw = client.image((root / good[1]).read_bytes(), job_id="client-bytes")
    raw.wait(timeout=120)
    (only,) = raw.results().to_pylist()
    assert only["status"] == "ok" and only["source_uri"].endswith(tuple("0123456789abcdef"))
    assert_embedding_ok(only["embedding"])


def test_a_cancelled_job_says_so(stack, tmp_path):
    """On a broker no worker listens to, a job stays queued; cancelling it is final."""
    env, _ = stack
    with RedisServer(tmp_path / "idle-redis") as idle:
        client = Client.from_env(broker=idle.url, storage=env["FACEQ_STORAGE_URL"])
        root = tmp_path / "few"
        write_sample_set(root, n_good=2)
        job = client.audit(root, mode="crop", job_id="client-cancel")
        assert job.cancel() and job.status().state == "cancelled"
        assert not job.cancel()  # only a running job can be cancelled
        with pytest.raises(JobError, match="was cancelled"):
            job.wait(timeout=5)


def test_misconfiguration_fails_fast_without_side_effects(stack, tmp_path):
    env, _ = stack
    with pytest.raises(ConfigError, match="does not answer"):
        Client.from_env(broker="redis://127.0.0.1:1/0", storage=env["FACEQ_STORAGE_URL"])
    with pytest.raises(ConfigError, match="FACEQ_STORAGE_URL"):
        Client.from_env(broker=env["FACEQ_BROKER_URL"], storage="file:/data/x")
    assert not Path("file:").exists()
    bad_broker = subprocess.run([sys.executable, "-m", "faceq.producer", "--broker", "redis://127.0.0.1:1/0", "audit",
                                 str(tmp_path), "--job-id", "never"], capture_output=True, text=True, timeout=60,
                                env=env)
    assert bad_broker.returncode == 1 and len(bad_broker.stderr.strip().splitlines()) == 1, bad_broker.stderr
    assert "does not answer" in bad_broker.stderr


def test_the_command_line_has_version_help_and_iso_times(stack, client, samples):
    env, _ = stack
    version = subprocess.run([sys.executable, "-m", "faceq.producer", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("faceq ")
    helped = subprocess.run([sys.executable, "-m", "faceq.producer", "audit", "--help"], capture_output=True, text=True)
    assert "FACEQ_STORAGE_URL" in helped.stdout and "FACEQ_ALLOWED_SOURCES" in helped.stdout
    root, _ = samples
    client.audit(root, mode="crop", job_id="client-iso").wait(timeout=120)
    listed = subprocess.run([sys.executable, "-m", "faceq.producer", "jobs", "--json"], capture_output=True, text=True,
                            env=env)
    assert listed.returncode == 0 and '"created_at": "20' in listed.stdout and "client-iso" in listed.stdout


def test_a_one_image_script_exits_cleanly_every_time(stack, samples):
    """A kiosk-style script: submit one photo, wait, read the row, exit 0 (it used to abort at exit)."""
    env, _ = stack
    root, expected = samples
    photo = root / next(k for k, v in expected.items() if v == "ok")
    script = ("from faceq import Client\n"
              f"job = Client.from_env().image({str(photo)!r})\n"
              "job.wait(timeout=60)\n"
              "print(job.results().num_rows)\n")
    for _ in range(5):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr


def test_nightly_dates_are_expanded():
    from datetime import datetime, timezone

    from faceq.producer.__main__ import expand_dates

    night = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)
    assert expand_dates("attendance-{yesterday}", night) == "attendance-2026-02-28"
    assert expand_dates("s3://b/checkins/{today}.csv", night) == "s3://b/checkins/2026-03-01.csv"


def test_compare_two_photos_on_the_command_line_prints_the_row_and_stays_out_of_listings(stack, client, samples):
    env, _ = stack
    root, expected = samples
    a, b = sorted(root / k for k, v in expected.items() if v == "ok")[:2]
    done = subprocess.run([sys.executable, "-m", "faceq.producer", "compare", str(a), str(b)], capture_output=True,
                          text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["decision"] and row["status"] == "ok" and "embedding" not in row
    pair = client.compare(a, b)
    assert_embedding_ok(pair["embedding"])
    assert_embedding_ok(pair["embedding_b"])
    listed = subprocess.run([sys.executable, "-m", "faceq.producer", "jobs"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and "compare-" not in listed.stdout, listed.stdout
    every = subprocess.run([sys.executable, "-m", "faceq.producer", "jobs", "--all", "--json"], capture_output=True,
                           text=True, env=env)
    assert sum(j["kind"] == "compare" and j["hidden"] for j in json.loads(every.stdout)) >= 2
    # stored apart: a glob of every job's parts reads no one-off call
    assert not [k for k in client.storage.list_keys("jobs/") if "/results/" in k and "compare" in k]
    one_offs = sorted({k.split("/")[1] for k in client.storage.list_keys("oneoff/") if "/results/part-" in k})
    assert sum(j.startswith("oneoff-compare-") for j in one_offs) >= 2
    # resumed after Redis forgot it, a one-off stays out of listings
    client.ledger.redis.delete(f"faceq:job:{one_offs[0]}")
    resumed = subprocess.run([sys.executable, "-m", "faceq.producer", "resume", one_offs[0]], capture_output=True,
                             text=True, env=env, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert client.ledger.progress(one_offs[0]).hidden
    listed = subprocess.run([sys.executable, "-m", "faceq.producer", "jobs"], capture_output=True, text=True, env=env)
    assert one_offs[0] not in listed.stdout
