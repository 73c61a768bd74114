"""Real jobs through the real path: producer CLI → redis-server → worker process → storage.

Two stacks (S3 via moto over HTTP, and file://), each with its own redis-server and worker
subprocess running the tiny IR-SE variant; the CLI runs as a subprocess, as users run it.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from faceq.job import spec as jobs
from devstack.processes import RedisServer, WorkerProcess
from faceq.storage.store import Storage, open_storage
from devstack.samples import write_sample_set
from tests.conftest import assert_embedding_ok, job_rows, needs_yunet, start_worker, worker_env

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    env: dict[str, str]
    storage: Storage
    worker: WorkerProcess

    def producer(self, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "faceq.producer", *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout)

    def rows(self, job_id: str) -> pa.Table:
        return job_rows(self.storage, job_id)

    def summary(self, job_id: str) -> dict:
        return json.loads(self.storage.get_bytes(jobs.summary_key(job_id)))

    def output(self, job_id: str, name: str) -> str:
        """A finished job's ``review`` or ``report`` as text."""
        return self.storage.get_bytes(self.summary(job_id)["outputs"][name]).decode("utf-8-sig")


def _stack(tmp: Path, storage_url: str, s3_endpoint: str | None, name: str, **extra: str):
    with RedisServer(tmp / "redis") as redis_server:
        env = worker_env(redis_server.url, storage_url, s3_endpoint, **extra)
        worker = start_worker(env, tmp, name)
        try:
            yield Stack(env, open_storage(storage_url, s3_endpoint), worker)
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, s3_endpoint, s3_client):
    s3_client.create_bucket(Bucket="faceq-e2e")
    yield from _stack(tmp_path_factory.mktemp("s3stack"), "s3://faceq-e2e/faceq", s3_endpoint, "s3-worker")


@pytest.fixture(scope="module")
def file_stack(tmp_path_factory, s3_endpoint):
    tmp = tmp_path_factory.mktemp("filestack")
    yield from _stack(tmp, (tmp / "store").as_uri(), s3_endpoint, "file-worker")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("samples")
    return root, write_sample_set(root, n_good=100)


def _check_audit(stack: Stack, job_id: str, expected: dict[str, str]) -> pa.Table:
    rows = stack.rows(job_id)
    assert rows.schema.field("embedding").type == pa.list_(pa.float32())  # 512 values where not null
    by_id = {row["item_id"]: row for row in rows.to_pylist()}
    assert rows.num_rows == len(by_id) == len(expected)  # exactly one row per item
    assert set(by_id) == set(expected)
    for item_id, want in expected.items():
        row = by_id[item_id]
        if want == "ok":
            assert row["status"] == "ok", row["error"]
            assert_embedding_ok(row["embedding"])
        else:
            assert row["status"] == "error" and row["needs_review"] and "error" in row["review_reasons"]
            assert row["error"].startswith(f"{want}: "), row["error"]
    summary = stack.summary(job_id)
    assert summary["n_rows"] == len(expected)
    assert summary["counts"]["status"]["error"] == sum(v != "ok" for v in expected.values())
    assert stack.storage.exists(summary["outputs"]["review"])
    return rows


def test_audit_of_a_local_directory_through_s3(s3_stack, samples):
    root, expected = samples
    done = s3_stack.producer("audit", str(root), "--job-id", "e2e-s3", "--mode", "crop", "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "job e2e-s3 done: 106 rows for 106 items" in done.stdout
    rows = _check_audit(s3_stack, "e2e-s3", expected)
    # the workers read uploaded copies, not the producer's disk
    inputs = f"s3://faceq-e2e/faceq/jobs/e2e-s3/runs/{s3_stack.summary('e2e-s3')['run_id']}/inputs/"
    assert all(uri.startswith(inputs) for uri in rows.column("source_uri").to_pylist())
    assert s3_stack.worker.alive() and s3_stack.worker.hostname in s3_stack.worker.ping()


def test_audit_of_an_s3_prefix(s3_stack, s3_client, samples):
    root, expected = samples
    subset = {k: v for k, v in expected.items() if k.startswith("broken/") or k.endswith(("0.jpg", "1.png"))}
    for name in subset:
        s3_client.put_object(Bucket="faceq-e2e", Key=f"photos/{name}", Body=(root / name).read_bytes())
    done = s3_stack.producer("audit", "s3://faceq-e2e/photos", "--job-id", "e2e-prefix", "--mode", "crop", "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = _check_audit(s3_stack, "e2e-prefix", subset)
    assert rows.column("source_uri")[0].as_py().startswith("s3://faceq-e2e/photos/")


def test_audit_on_file_storage(file_stack, samples):
    root, expected = samples
    done = file_stack.producer("audit", str(root), "--job-id", "e2e-file", "--mode", "crop", "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = _check_audit(file_stack, "e2e-file", expected)
    # same machine: the worker reads the files in place, nothing is copied
    assert rows.column("source_uri")[0].as_py().startswith(root.as_uri())
    assert file_stack.worker.alive()


def test_rerunning_a_job_id_replaces_its_rows(file_stack, samples):
    root, expected = samples
    first = file_stack.producer("audit", str(root), "--job-id", "e2e-rerun", "--chunk-size", "16", "--mode", "crop",
                                "--wait", "--no-progress")
    assert first.returncode == 0, first.stderr
    second = file_stack.producer("audit", str(root), "--job-id", "e2e-rerun", "--chunk-size", "50", "--mode", "crop",
                                 "--wait", "--no-progress")
    assert second.returncode == 0, second.stderr
    rows = file_stack.rows("e2e-rerun")
    runs = file_stack.storage.list_children(jobs.runs_prefix("e2e-rerun"))
    assert runs == [file_stack.summary("e2e-rerun")["run_id"]]  # the first run was deleted once replaced
    assert rows.num_rows == len(expected)
    assert len(set(rows.column("item_id").to_pylist())) == len(expected)
    assert file_stack.summary("e2e-rerun")["n_chunks"] == 3


def test_attendance_manifest_carries_its_columns_into_the_output(file_stack, samples, tmp_path):
    root, expected = samples
    good = [k for k, v in expected.items() if v == "ok"][:6]
    manifest = tmp_path / "checkins.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["record_id", "employee_id", "image", "device_id", "captured_at"])
        for i, name in enumerate(good):
            writer.writerow([f"r{i}", f"emp{i % 3}", str(root / name), f"gate-{i % 2}", f"2026-11-24T08:0{i}:00Z"])
        writer.writerow(["r-trunc", "emp9", str(root / "broken/truncated.jpg"), "gate-0", "2026-11-24T09:00:00Z"])
        writer.writerow(["r-missing", "emp9", "no/such/photo.jpg", "gate-1", "2026-11-24T09:01:00Z"])
    outside = file_stack.producer("attendance", str(manifest), "--job-id", "e2e-att-outside", "--no-progress")
    assert outside.returncode == 1 and "checkins.csv:2: image is outside the job's allowed sources" in outside.stderr
    done = file_stack.producer("attendance", str(manifest), "--job-id", "e2e-att", "--mode", "crop", "--wait",
                               "--no-progress", FACEQ_ALLOWED_SOURCES=root.as_uri())
    assert done.returncode == 0, done.stderr
    rows = {r["item_id"]: r for r in file_stack.rows("e2e-att").to_pylist()}
    assert set(rows) == {f"r{i}" for i in range(6)} | {"r-trunc", "r-missing"}
    assert rows["r3"]["employee_id"] == "emp0" and rows["r3"]["device_id"] == "gate-1"
    assert rows["r3"]["captured_at_raw"] == "2026-11-24T08:03:00Z" and rows["r3"]["record_id"] == "r3"
    assert rows["r3"]["captured_at"] == datetime(2026, 11, 24, 8, 3, tzinfo=timezone.utc)  # parsed
    assert rows["r3"]["status"] == "ok"
    assert_embedding_ok(rows["r3"]["embedding"])
    assert rows["r-trunc"]["error"].startswith("truncated: ")
    assert rows["r-missing"]["error"].startswith("unreadable: ") and rows["r-missing"]["needs_review"]
    review = file_stack.output("e2e-att", "review")
    assert "r-missing" in review and "emp9" in review


def test_status_and_wait_commands(file_stack, samples):
    root, _ = samples
    submitted = file_stack.producer("audit", str(root / "broken"), "--job-id", "e2e-status", "--mode", "crop",
                                    "--no-report", "--no-progress")
    assert submitted.returncode == 0, submitted.stderr
    waited = file_stack.producer("wait", "e2e-status", "--no-progress", "--timeout", "120")
    assert waited.returncode == 0, waited.stderr
    assert "job e2e-status done: 6 rows" in waited.stdout
    status = file_stack.producer("status", "e2e-status", "--json")
    assert status.returncode == 0
    report = json.loads(status.stdout)
    assert report["state"] == "done" and report["items_done"] == 6 and report["summary"]["n_rows"] == 6
    outputs = report["summary"]["outputs"]
    assert file_stack.storage.exists(outputs["review"])
    assert not file_stack.storage.exists(outputs["report"])  # --no-report
    unknown = file_stack.producer("status", "no-such-job")
    assert unknown.returncode == 1 and "no job 'no-such-job'" in unknown.stderr


def test_a_producer_writing_where_the_workers_do_not_read_is_refused(tmp_path_factory, s3_endpoint, s3_client,
                                                                      samples):
    """Producer and workers on different storage: refused before anything is written."""
    root, _ = samples
    s3_client.create_bucket(Bucket="faceq-producer-side")
    tmp = tmp_path_factory.mktemp("broken-stack")
    with RedisServer(tmp / "redis") as redis_server:
        worker = start_worker(worker_env(redis_server.url, "s3://no-such-bucket/faceq", s3_endpoint), tmp,
                              "misconfigured-worker")
        try:
            producer_side = Stack(worker_env(redis_server.url, "s3://faceq-producer-side/faceq", s3_endpoint),
                                  open_storage("s3://faceq-producer-side/faceq", s3_endpoint), worker)
            done = producer_side.producer("audit", str(root / "broken"), "--job-id", "e2e-doomed", "--mode", "crop",
                                          "--wait", "--no-progress", "--timeout", "120")
            assert done.returncode == 1
            assert "writes to s3://faceq-producer-side/faceq but the live workers read s3://no-such-bucket/faceq" \
                in done.stderr
            assert list(producer_side.storage.list_keys("jobs/e2e-doomed/")) == []
            assert worker.alive()
        finally:
            worker.stop()


def test_a_chunk_whose_plan_cannot_be_read_fails_once_with_the_reason(file_stack, samples):
    """A worker that cannot read a job's manifest records the chunk as failed: no inference, no retry loop."""
    from faceq.job.ledger import Ledger
    from faceq.producer.submit import JobOptions, enqueue, write_plan
    from faceq.settings import Settings

    root, _ = samples
    header = write_plan(Settings(), file_stack.storage, items=[jobs.Item("a", (root / "broken/empty.jpg").as_uri())],
                        source=str(root), job_id="e2e-unreadable-plan", options=JobOptions("audit"))
    file_stack.storage.delete_prefix(jobs.chunk_manifest_key(header.job_id, header.run_id, 0))
    Ledger.from_url(file_stack.env["FACEQ_BROKER_URL"]).start(header.job_id, header.run_id, "audit", 1, 1)
    enqueue(header, [0], file_stack.env["FACEQ_BROKER_URL"])
    done = file_stack.producer("wait", "e2e-unreadable-plan", "--no-progress", "--timeout", "60")
    assert done.returncode == 1 and "cannot complete: 1 failure(s) (chunk 0: StorageError: no such object" in done.stderr


def test_a_finalize_that_fails_for_good_fails_the_job_within_seconds(file_stack, samples):
    """The first GPU host's failure: every chunk ran, then finalize could not read a part back.
    ``faceq wait`` must say so with the reason at once, not wait for its timeout."""
    import time

    root, _ = samples
    done = file_stack.producer("audit", str(root / "broken"), "--job-id", "e2e-finalize-fails", "--mode", "crop",
                               "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    summary = file_stack.summary("e2e-finalize-fails")
    (part,) = file_stack.storage.list_keys(summary["outputs"]["results"])
    file_stack.storage.put_bytes(part, b"PAR1 not a Parquet file PAR1")  # the part finalize reads back
    file_stack.storage.delete_prefix(jobs.summary_key("e2e-finalize-fails"))
    resumed = file_stack.producer("resume", "e2e-finalize-fails")
    assert resumed.returncode == 0, resumed.stderr
    started = time.monotonic()
    waited = file_stack.producer("wait", "e2e-finalize-fails", "--no-progress", "--timeout", "120")
    assert waited.returncode == 1 and time.monotonic() - started < 30
    assert "job e2e-finalize-fails cannot complete: 1 failure(s) (finalize: " in waited.stderr, waited.stderr
    assert "Traceback" not in waited.stderr
    status = file_stack.producer("status", "e2e-finalize-fails")
    assert '"state": "failed"' in status.stdout or "failed" in status.stdout, status.stdout


@needs_yunet
def test_audit_defaults_to_detect_mode_on_real_photos(file_stack, tmp_path):
    from tests.photos import write_photos

    write_photos(tmp_path / "photos")
    done = file_stack.producer("audit", str(tmp_path / "photos"), "--job-id", "e2e-detect", "--all-faces", "--wait",
                               "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = file_stack.rows("e2e-detect").to_pylist()
    by_item = {}
    for row in rows:
        by_item.setdefault(row["item_id"], []).append(row)
    assert [r["status"] for r in by_item["cat.jpg"]] == ["no_face"]
    assert by_item["cat.jpg"][0]["review_reasons"] == ["no_face"]
    assert [r["face_index"] for r in by_item["two-people.png"]] == [0, 1]
    (portrait,) = by_item["portrait.png"]
    assert portrait["status"] == "ok" and portrait["face_count"] == 1 and len(portrait["landmarks"]) == 10
    summary = file_stack.summary("e2e-detect")
    assert summary["n_items"] == 3 and summary["n_rows"] == 4 and summary["mode"] == "detect"


def test_worker_heartbeat_reports_device_batching_and_throughput(file_stack, samples):
    from devstack.processes import wait_until

    def heartbeat() -> dict | None:
        listed = file_stack.producer("workers")
        assert listed.returncode == 0, listed.stderr
        mine = [w for w in json.loads(listed.stdout) if w["worker"] == file_stack.worker.hostname]
        return mine[0] if mine else None

    root, expected = samples
    done = file_stack.producer("audit", str(root), "--job-id", "e2e-heartbeat", "--mode", "crop", "--wait",
                               "--no-progress")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: (heartbeat() or {}).get("images_total", 0) >= len(expected) - 6, 20, "a fresh heartbeat")
    beat = heartbeat()
    assert beat["device"] == "cpu" and beat["precision"] == "fp32" and beat["max_batch"] == 16
    assert beat["microbatch"] is True and beat["batches_total"] >= 1
    assert beat["images_per_second"] > 0 and beat["model_id"] == "rts-ir_se_tiny-random-seed0"


def test_the_producer_never_imports_torch():
    probe = "import sys, faceq.producer.__main__, faceq.producer.submit, faceq.producer.progress; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_the_report_is_self_contained_and_regenerable(file_stack, samples, tmp_path):
    root, _ = samples
    done = file_stack.producer("audit", str(root), "--job-id", "e2e-report", "--mode", "crop", "--wait",
                               "--no-progress")
    assert done.returncode == 0, done.stderr
    fetched = file_stack.producer("report", "e2e-report", "--out", str(tmp_path / "r.html"))
    assert fetched.returncode == 0, fetched.stderr
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "data:image/jpeg;base64," not in page or "<img class='thumb'" in page
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)  # no external assets
    assert "broken/truncated.jpg" in page
    assert "Not real results" in page and "RANDOM weights" in page  # the placeholder banner
    again = file_stack.producer("report", "e2e-report", "--regenerate", "--out", str(tmp_path / "again.html"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.html").read_text().count("<tr>") == page.count("<tr>")


def test_every_job_kind_writes_one_schema(file_stack, samples, tmp_path):
    """Audit and attendance parts have one schema: a glob over jobs reads without options."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    root, expected = samples
    manifest = tmp_path / "one.csv"
    photo = root / next(k for k, v in expected.items() if v == "ok")
    manifest.write_text(f"record_id,employee_id,image,device_id,captured_at,shift\nr1,e1,{photo},gate,2026-11-24,night\n")
    for args in (("audit", str(root / "broken"), "--job-id", "e2e-schema-audit"),
                 ("attendance", str(manifest), "--job-id", "e2e-schema-att")):
        done = file_stack.producer(*args, "--mode", "crop", "--wait", "--no-progress",
                                   FACEQ_ALLOWED_SOURCES=root.as_uri())
        assert done.returncode == 0, done.stderr
    summaries = [file_stack.summary(job) for job in ("e2e-schema-audit", "e2e-schema-att")]
    parts = [str(p) for s in summaries for p in sorted((file_stack.storage.root / s["outputs"]["results"]).glob("*"))]
    schemas = {pq.read_schema(p).remove_metadata() for p in parts}
    assert len(schemas) == 1, schemas
    table = ds.dataset(parts, format="parquet").to_table()
    assert set(table.column("job_id").to_pylist()) == {"e2e-schema-audit", "e2e-schema-att"}
    (att,) = [r for r in table.to_pylist() if r["job_id"] == "e2e-schema-att"]
    assert att["extra"] == [("shift", "night")] and att["captured_at"].year == 2026
