"""Hostile input through the real path: producer CLI → password-protected Redis → worker → S3 (moto).

Nothing outside a job's allowed roots is read or uploaded, no secret reaches storage or
output, spreadsheet formulas stay text, and the worker survives every case.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from faceq.job import spec as jobs
from devstack.processes import RedisServer
from faceq.job.spec import Item
from faceq.job.ledger import Ledger
from faceq.settings import Settings
from faceq.storage.store import open_storage
from devstack.samples import write_sample_set
from faceq.producer.submit import JobOptions, enqueue, write_plan
from tests.conftest import job_rows, start_worker, worker_env
from tests.test_end_to_end import Stack

pytestmark = pytest.mark.integration

PASSWORD = "S3cretPW-for-tests"
SECRET = "AKIA-very-secret-value-123"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_endpoint, s3_client):
    s3_client.create_bucket(Bucket="faceq-hostile")
    tmp = tmp_path_factory.mktemp("hostile")
    with RedisServer(tmp / "redis", password=PASSWORD) as redis_server:
        env = worker_env(redis_server.url, "s3://faceq-hostile/faceq", s3_endpoint, MY_API_SECRET=SECRET)
        worker = start_worker(env, tmp, "hostile-worker")
        try:
            yield Stack(env, open_storage("s3://faceq-hostile/faceq", s3_endpoint), worker)
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """An audited folder holding good photos and every kind of link a hostile user could plant."""
    root = tmp_path_factory.mktemp("tree")
    write_sample_set(root, n_good=4)
    (root / "passwd_link.jpg").symlink_to("/etc/passwd")
    (root / "proc_environ_link.jpg").symlink_to("/proc/self/environ")
    (root / "zero_link.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.jpg")
    return root


def _all_objects(stack: Stack) -> bytes:
    return b"".join(stack.storage.get_bytes(key) for key in stack.storage.list_keys(""))


def test_an_audit_never_follows_links_out_of_its_tree_nor_uploads_secrets(stack, tree):
    done = stack.producer("audit", str(tree), "--job-id", "hostile-tree", "--mode", "crop", "--wait",
                          "--no-progress")
    assert done.returncode == 0, done.stderr
    ids = set(job_rows(stack.storage, "hostile-tree").column("item_id").to_pylist())
    assert not ids & {"passwd_link.jpg", "proc_environ_link.jpg", "zero_link.jpg", "pipe.jpg"}
    stored = _all_objects(stack)
    assert b"root:x:0:0" not in stored and SECRET.encode() not in stored and PASSWORD.encode() not in stored
    assert stack.worker.alive()


@pytest.mark.parametrize("image, error", [
    ("../../../../etc/passwd", "image is outside the job's allowed sources"),
    ("file:///etc/shadow", "image is outside the job's allowed sources"),
    ("/etc/hostname", "image is outside the job's allowed sources"),
    ("s3://some-other-bucket/x.jpg", "image is outside the job's allowed sources"),
    ("http://example.com/x.jpg", "image"),
    ("S3://faceq-hostile/x.jpg", "image"),
    ("s3:///x", "image"),
    ("file://otherhost/x.jpg", "image"),
])
def test_a_manifest_line_pointing_outside_is_refused_with_its_line_number(stack, tmp_path, image, error):
    manifest = tmp_path / "checkins.csv"
    manifest.write_text("record_id,employee_id,image,device_id,captured_at\n"
                        f"r1,e1,{tree_photo(tmp_path)},gate,2026\nr2,e2,{image},gate,2026\n")
    done = stack.producer("attendance", str(manifest), "--job-id", "hostile-manifest", "--no-progress")
    assert done.returncode == 1 and f"checkins.csv:3: {error}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not stack.storage.exists(jobs.current_run_key("hostile-manifest"))  # nothing was planned


def tree_photo(folder: Path) -> Path:
    write_sample_set(folder / "photos", n_good=1)
    return folder / "photos" / "faces" / "cam0" / "face-0000.jpg"


def test_a_forged_plan_cannot_make_a_worker_read_outside_the_allowed_roots(stack, tree):
    """A plan written straight into storage, skipping every producer check: the worker refuses
    each reference on its own, with one error row per item, and stays up."""
    hostile = {"passwd": "file:///etc/passwd", "environ": "file:///proc/self/environ", "zero": "file:///dev/zero",
               "other-bucket": "s3://some-other-bucket/secret.jpg", "malformed": "http://example.com/x.jpg",
               "in-storage-missing": stack.storage.uri("nothing/here.jpg")}
    settings = Settings(chunk_size=4)
    header = write_plan(settings, stack.storage, items=[Item(k, v) for k, v in hostile.items()], source="forged",
                        job_id="hostile-forged", options=JobOptions("audit"))
    ledger = Ledger.from_url(stack.env["FACEQ_BROKER_URL"])
    ledger.start(header.job_id, header.run_id, "audit", header.n_chunks, header.n_items)
    enqueue(header, range(header.n_chunks), stack.env["FACEQ_BROKER_URL"])
    waited = stack.producer("wait", "hostile-forged", "--no-progress", "--timeout", "120")
    assert waited.returncode == 0, waited.stderr
    rows = {r["item_id"]: r for r in job_rows(stack.storage, "hostile-forged").to_pylist()}
    assert {k: r["error"].split(":")[0] for k, r in rows.items()} == {
        "passwd": "forbidden", "environ": "forbidden", "zero": "forbidden", "other-bucket": "forbidden",
        "malformed": "bad_uri", "in-storage-missing": "unreadable"}
    assert rows["passwd"]["error"] == rows["other-bucket"]["error"]  # says nothing about the target
    assert stack.worker.alive()


def test_spreadsheet_formulas_in_review_csv_stay_text(stack, tmp_path):
    photo = tree_photo(tmp_path)
    manifest = tmp_path / "formulas.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["record_id", "employee_id", "image", "device_id", "captured_at"])
        writer.writerow(["=cmd|' /C calc'!A0", "+SUM(1+1)", "missing.jpg", "@cam", "=HYPERLINK(\"http://x\")"])
        writer.writerow(["ok-1", "-2+3", str(photo), "\tgate", "2026"])
    done = stack.producer("attendance", str(manifest), "--job-id", "hostile-csv", "--mode", "crop", "--wait",
                          "--no-progress")
    assert done.returncode == 0, done.stderr
    summary = json.loads(stack.storage.get_bytes(jobs.summary_key("hostile-csv")))
    review = stack.storage.get_bytes(summary["outputs"]["review"]).decode("utf-8-sig")
    for row in csv.reader(io.StringIO(review)):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or _is_number(cell), row


def test_the_broker_password_is_never_printed(stack):
    for args in (("status", "no-such-job"), ("wait", "no-such-job", "--timeout", "1", "--no-progress")):
        done = stack.producer(*args)
        assert done.returncode == 1
        assert PASSWORD not in done.stdout + done.stderr and "no job 'no-such-job'" in done.stderr
    unreachable = stack.producer("status", "x", FACEQ_BROKER_URL=f"redis://:{PASSWORD}@127.0.0.1:1/0")
    assert unreachable.returncode == 1 and PASSWORD not in unreachable.stderr and "Traceback" not in unreachable.stderr
    assert PASSWORD not in stack.worker.log_text() and SECRET not in stack.worker.log_text()


def _is_number(cell: str) -> bool:
    """A number faceq wrote (a negative similarity is data, not a formula: faceq.outputs.csvsafe)."""
    try:
        float(cell)
    except ValueError:
        return False
    return cell.lstrip("-").replace(".", "", 1).isdigit()
