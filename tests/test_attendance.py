"""Enrol a gallery from images, then verify an attendance manifest against it, end to end.

Seeded random weights give meaningless absolute similarities, so this stack sets the
similarity thresholds (configurable, as users may) where a same-image check-in (≈ 1.0) is a
match and another person's face (≤ 0.9 for these images) a mismatch. The rules themselves
are tested at the seed's thresholds in test_decisions.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from faceq.storage.store import open_storage
from faceq.models.weights import load_model
from devstack.samples import draw_face, encode
from tests.conftest import redis_and_worker, write_csv
from tests.test_end_to_end import Stack

pytestmark = pytest.mark.integration


def gallery_stack(tmp_path_factory, name: str):
    """A redis-server and a worker whose thresholds separate drawn faces (shared with test_review).

    The worker loads the seeded random weights from a checkpoint file: the same numbers as
    seed 0, but its rows are not placeholders, so the review texts are the ones real weights get."""
    tmp = tmp_path_factory.mktemp(name)
    checkpoint = tmp / "seed0.pt"
    torch.save(load_model(None, "ir_se_tiny", seed=0).model.state_dict(), checkpoint)
    with redis_and_worker(tmp, f"{name}-worker", (tmp / "store").as_uri(), FACEQ_MATCH_SIMILARITY="0.97",
                          FACEQ_MISMATCH_SIMILARITY="0.95", FACEQ_DUPLICATE_SIMILARITY="0.97",
                          FACEQ_CHUNK_SIZE="2", FACEQ_MODEL_WEIGHTS=str(checkpoint)) as (env, worker):
        yield Stack(env, open_storage((tmp / "store").as_uri()), worker), tmp


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from gallery_stack(tmp_path_factory, "attendance")


def checkin_photos(root: Path, n: int) -> Path:
    """``n`` drawn faces f0.jpg … (n ≥ 6), a truncated copy of f5 and an empty file (shared with test_review)."""
    root.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        (root / f"f{i}.jpg").write_bytes(encode(draw_face(rng, 140), ".jpg"))
    (root / "truncated.jpg").write_bytes((root / "f5.jpg").read_bytes()[:300])
    (root / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def photos(stack) -> Path:
    return checkin_photos(stack[1] / "photos", 6)


def _enrol(stack, photos: Path, job_id: str) -> dict:
    st, tmp = stack
    manifest = write_csv(tmp / f"{job_id}.csv", ["employee_id", "image"], [
        ["e1", str(photos / "f0.jpg")],
        ["e2", str(photos / "f1.jpg")], ["e2", str(photos / "f2.jpg")],
        ["e3", str(photos / "f3.jpg")], ["e3", str(photos / "truncated.jpg")],
        ["e4", str(photos / "empty.jpg")],
        ["e5", str(photos / "f0.jpg")],  # the same photo as e1: a duplicate identity
    ])
    done = st.producer("enroll", str(manifest), "--gallery", "staff", "--job-id", job_id, "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    return st.summary(job_id)


def test_enrolment_builds_a_versioned_gallery_and_reports_its_problems(stack, photos):
    st, _ = stack
    gallery = _enrol(stack, photos, "enrol-1")["gallery"]
    assert gallery["name"] == "staff" and gallery["version"] == 1 and gallery["enrolled"] == 4
    assert gallery["employees_without_usable_image"] == ["e4"]
    assert {r["item_id"] for r in gallery["rejected_images"]} == {f"e3/{photos / 'truncated.jpg'}",
                                                                  f"e4/{photos / 'empty.jpg'}"}
    assert [(d["employee_a"], d["employee_b"]) for d in gallery["likely_duplicates"]] == [("e1", "e5")]
    assert st.storage.exists("galleries/staff/v1/gallery.parquet")
    assert json.loads(st.storage.get_bytes("galleries/staff/current.json")) == {"version": 1}


def test_attendance_decisions_against_the_gallery(stack, photos):
    st, tmp = stack
    if not st.storage.exists("galleries/staff/current.json"):
        _enrol(stack, photos, "enrol-1")
    manifest = write_csv(tmp / "checkins.csv", ["record_id", "employee_id", "image", "device_id", "captured_at"], [
        ["r-same", "e1", str(photos / "f0.jpg"), "gate-1", "2026-11-24T08:00:00Z"],
        ["r-other", "e1", str(photos / "f3.jpg"), "gate-1", "2026-11-24T08:01:00Z"],
        ["r-unenrolled", "e9", str(photos / "f1.jpg"), "gate-2", "2026-11-24T08:02:00Z"],
        ["r-no-template", "e4", str(photos / "f4.jpg"), "gate-2", "2026-11-24T08:03:00Z"],
        ["r-broken", "e2", str(photos / "truncated.jpg"), "gate-2", "2026-11-24T08:04:00Z"],
    ])
    done = st.producer("attendance", str(manifest), "--gallery", "staff", "--top-k", "3", "--job-id", "att-1",
                       "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = {r["item_id"]: r for r in st.rows("att-1").to_pylist()}
    same, other = rows["r-same"], rows["r-other"]
    assert same["decision"] == "match" and not same["needs_review"] and same["similarity"] == pytest.approx(1, abs=1e-4)
    assert other["decision"] == "mismatch" and other["review_reasons"] == ["possible_impersonation"]
    assert other["best_candidate_id"] == "e3"  # who the photo really looks like
    assert other["similarity"] < 0.95 and len(other["top_k_ids"]) == 3 and other["top_k_ids"][0] == "e3"
    for record in ("r-unenrolled", "r-no-template"):
        assert rows[record]["decision"] == "not_enrolled" and rows[record]["review_reasons"] == ["not_enrolled"]
    assert rows["r-broken"]["decision"] == "error" and rows["r-broken"]["error"].startswith("truncated: ")
    assert {r["gallery"] for r in rows.values()} == {"staff@v1"}
    summary = st.summary("att-1")
    assert summary["counts"]["decision"] == {"error": 1, "match": 1, "mismatch": 1, "not_enrolled": 2}
    assert summary["gallery"] == "staff@v1"
    review = st.output("att-1", "review")
    assert "possible_impersonation" in review and "r-same" not in review
    # three chunks of two, one resident copy of the gallery on the worker
    log = st.worker.log_path.read_text()
    assert len(re.findall(r"gallery staff@v1 resident", log)) == 1


def test_a_new_enrolment_is_a_new_version_and_old_jobs_keep_theirs(stack, photos):
    st, _ = stack
    if not st.storage.exists("galleries/staff/current.json"):
        _enrol(stack, photos, "enrol-1")
    before = st.storage.get_bytes("galleries/staff/v1/gallery.parquet")
    assert _enrol(stack, photos, "enrol-2")["gallery"]["version"] == 2
    assert st.storage.get_bytes("galleries/staff/v1/gallery.parquet") == before
    report = st.output("enrol-2", "report")
    assert "Likely duplicate identities" in report and "e4" in report


def test_an_unknown_gallery_is_refused_before_anything_is_queued(stack, photos):
    st, tmp = stack
    manifest = write_csv(tmp / "one.csv", ["record_id", "employee_id", "image", "device_id", "captured_at"],
                    [["r1", "e1", str(photos / "f0.jpg"), "", ""]])
    done = st.producer("attendance", str(manifest), "--gallery", "nobody-enrolled-this", "--no-progress")
    assert done.returncode == 1 and "no gallery 'nobody-enrolled-this'" in done.stderr
