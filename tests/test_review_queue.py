"""The review queue without a worker: guidance for every decision and reason, bounded sections,
photos with the face drawn, verdict storage, and gallery versions made by delta enrolment and
removal (which photos built which template, the enrolment mode enforced)."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from faceq.outputs import verdicts
from faceq.errors import JobError
from faceq.gallery import EnrolmentBuilder, GalleryStore, build_enrolment
from faceq.outputs.guidance import DECISION_GUIDANCE, REASON_GUIDANCE, explain, section_of
from faceq.outputs.report import photo, render_report
from faceq.outputs.results import to_parquet
from faceq.settings import TrustThresholds
from faceq.storage.store import open_storage
from faceq.outputs.review_queue import ReviewQueue
from faceq.models.decisions import DECISIONS, review_reasons, verify
from tests.dom import parse


def test_every_decision_and_reason_has_plain_words_and_an_action():
    thresholds = TrustThresholds()
    reasons = set()
    for status in ("ok", "no_face", "error"):
        for quality in (None, 0.1, 0.3, 0.5, 0.9):
            for faces in (1, 2):
                reasons.update(review_reasons(status, quality, faces, thresholds))
            for similarity in (0.1, 0.4, 0.9):
                for enrolled in (True, False):
                    reasons.update(verify(status, quality, similarity, enrolled, thresholds).reasons)
    assert reasons <= set(REASON_GUIDANCE) and set(DECISIONS) <= set(DECISION_GUIDANCE)
    for guide in [*DECISION_GUIDANCE.values(), *REASON_GUIDANCE.values()]:
        assert guide.reason.endswith(".") and guide.action and guide.short_action and "_" not in guide.title
    row = {"decision": "mismatch", "similarity": 0.21, "quality": 0.9, "best_candidate_id": "e7",
           "employee_id": "e1", "review_reasons": ["possible_impersonation"]}
    reason, action = explain(row, "attendance", thresholds.__dict__)
    assert "Similarity 0.21 (below 0.35)" in reason and "Looks most like e7" in reason and action.startswith("Check ID")
    audit = {"review_reasons": ["multiple_faces", "low_quality"], "quality": 0.3, "face_index": 1, "face_count": 3}
    assert section_of(audit, None) == "low_quality"
    reason, _ = explain(audit, None)
    assert "face 2 of 3 (boxed)" in reason


def _flag(i: int, decision: str) -> dict:
    return {"item_id": f"r{i}", "source_uri": None, "status": "ok", "error": None, "quality": 0.9,
            "review_reasons": ["x"], "face_count": 1, "face_index": 0, "bbox": None, "landmarks": None,
            "decision": decision, "similarity": 0.2, "best_candidate_id": "e1", "best_candidate_score": 0.5,
            "top_k_ids": ["e1", "e2"], "top_k_scores": [0.5, 0.4], "employee_id": f"e{i % 7}",
            "device_id": "gate", "captured_at_raw": "2026-11-24T08:00:00Z"}


def _summary(n_flagged: int) -> dict:
    return {"job_id": "big", "kind": "attendance", "mode": "crop", "source": "x.csv", "n_items": n_flagged,
            "n_rows": n_flagged, "gallery": "nowhere@v1", "model_ids": ["m"], "alerts": [], "sources": {},
            "counts": {"status": {"ok": n_flagged}, "review_reasons": {}, "needs_review": n_flagged,
                       "folded_into_source_alerts": 0, "decision": {}},
            "quality": {"histogram": {"edges": [0.0, 0.5, 1.0], "counts": [0, n_flagged]}},
            "thresholds": TrustThresholds().__dict__, "timings": {"items_per_second": 1.0}}


def test_hundreds_of_flags_stay_usable_and_the_page_bounded(tmp_path):
    storage = open_storage((tmp_path / "store").as_uri())
    queue = ReviewQueue("attendance")
    for i in range(1000):
        queue.add(_flag(i, ("mismatch", "grey_zone", "untrusted", "error")[i % 4]), folded=False)
    sections = queue.sections()
    assert [s for s, _, _ in sections] == ["mismatch", "grey_zone", "untrusted", "error"]
    assert [n for _, n, _ in sections] == [250] * 4  # every flag counted
    assert all(len(rows) == 20 for _, _, rows in sections) and len(queue) == 80
    assert sum(sum(c.values()) for c in queue.employees.values()) == 1000
    page = render_report(_summary(1000), queue, storage, decides="attendance")
    dom = parse(page)
    assert len(dom.find_all("article", "item")) == 80
    assert [s.attrs["data-count"] for s in dom.find_all("section", "queue")] == ["250"] * 4
    assert "first 20 of 250" in page and len(page) < 1_000_000


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    image = Image.new("RGB", (width, height), (128, 128, 128))
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_the_check_in_photo_shows_the_face_box_and_landmarks_in_the_decoded_image(tmp_path):
    storage = open_storage((tmp_path / "store").as_uri())
    (tmp_path / "wide.jpg").write_bytes(_jpeg(400, 200))
    (tmp_path / "rotated.jpg").write_bytes(_jpeg(200, 400, orientation=6))  # decoded: 400 × 200
    for name in ("wide.jpg", "rotated.jpg"):
        drawn = Image.open(io.BytesIO(__import__("base64").b64decode(
            photo(storage, (tmp_path / name).as_uri(), 100, box=[100, 50, 300, 150],
                  landmarks=[150, 90, 250, 90, 200, 110, 160, 130, 240, 130], scale=2.0))))
        assert drawn.size == (200, 100)
        r, g, b = drawn.getpixel((50, 50))  # the box's left edge (100 px / 2)
        assert r > 200 and g < 140 and b < 100, (name, (r, g, b))
        assert drawn.getpixel((100, 45))[0] < 200  # inside the box, away from the landmarks: untouched grey
    whole = Image.open(io.BytesIO(__import__("base64").b64decode(
        photo(storage, (tmp_path / "wide.jpg").as_uri(), 100, box=[0, 0, 400, 200]))))
    assert abs(whole.getpixel((1, 50))[0] - 128) < 10  # crop mode's whole-image box is not drawn
    assert photo(storage, (tmp_path / "missing.jpg").as_uri(), 100) is None


def _finished_job(storage, job_id: str, rows: list[dict]) -> None:
    import json

    prefix = f"jobs/{job_id}/runs/r1/results/"
    storage.put_bytes(prefix + "part-00000.parquet", to_parquet(pa.Table.from_pylist(rows)))
    storage.put_bytes(f"jobs/{job_id}/summary.json", json.dumps({"outputs": {"results": prefix}}).encode())


def test_verdicts_are_appended_kept_per_job_and_indexed_per_gallery(tmp_path):
    storage = open_storage((tmp_path / "store").as_uri())
    row = {"item_id": "r1", "decision": "mismatch", "review_reasons": ["possible_impersonation"],
           "gallery": "staff@v2", "employee_id": "e1", "captured_at_raw": "2026-11-24T08:00:00Z"}
    _finished_job(storage, "att-1", [row, {**row, "item_id": "r2", "employee_id": "e2"}])
    _finished_job(storage, "att-2", [{**row, "item_id": "s1"}])
    when = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
    stored = verdicts.record(storage, "att-1", "r1", "rejected", "not him", "alice", now=when)
    assert stored["employee_id"] == "e1" and stored["captured_at"] == "2026-11-24T08:00:00Z"
    verdicts.record(storage, "att-1", "r1", "confirmed", "", "bob", now=when)
    verdicts.record(storage, "att-2", "s1", "retake", "blurred", "alice", now=when)
    job = verdicts.read(storage, verdicts.job_verdicts_key("att-1"))
    assert job.column("verdict").to_pylist() == ["rejected", "confirmed"]
    assert verdicts.latest_per_item(job)["r1"]["reviewer"] == "bob"
    prior = verdicts.prior_verdicts(storage, "staff", ["e1", "e2"], exclude_job="att-2")
    assert [v["verdict"] for v in prior["e1"]] == ["confirmed", "rejected"] and "e2" not in prior  # newest first
    assert verdicts.describe(prior["e1"][1]) == '2026-11-25 rejected by alice (job att-1): "not him"'
    with pytest.raises(JobError, match="unknown verdict"):
        verdicts.record(storage, "att-1", "r1", "maybe", "", "alice")
    with pytest.raises(JobError, match="no item 'zz'"):
        verdicts.record(storage, "att-1", "zz", "confirmed", "", "alice")
    with pytest.raises(JobError, match="longer than"):
        verdicts.record(storage, "att-1", "r1", "confirmed", "x" * 5000, "alice")
    with pytest.raises(JobError, match="needs a reviewer"):
        verdicts.record(storage, "att-1", "r1", "confirmed", "", " ")
    with pytest.raises(JobError, match="no summary"):
        verdicts.record(storage, "att-9", "r1", "confirmed", "", "alice")
    table = verdicts.read(storage, verdicts.gallery_verdicts_key("staff"))
    verdicts.append(storage, "x.parquet", table, keep_last=2)
    assert verdicts.read(storage, "x.parquet").num_rows == 2


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _enrolment(rows: list[tuple], job_id: str = "enrol", model: str = "m1"):
    builder = EnrolmentBuilder(0.6)
    builder.add_table(pa.Table.from_pylist([
        {"employee_id": e, "item_id": f"{e}/{uri}", "source_uri": f"file:///photos/{uri}", "status": status,
         "error": None if status == "ok" else "truncated: x", "quality": quality,
         "embedding": _unit(seed) if status == "ok" else None}
        for e, uri, seed, quality, status in rows]), job_id)
    return builder.build(0.99, model)


def _report(mode: str = "crop", model: str = "m1") -> dict:
    return {"model_id": model, "mode": mode, "rejected_images": [], "employees_without_usable_image": [],
            "likely_duplicates": [], "enrol_quality": 0.6}


def test_delta_enrolment_and_removal_make_new_versions_with_exactly_the_changes(tmp_path):
    store = GalleryStore(open_storage((tmp_path / "store").as_uri()))
    first = _enrolment([("a", "a1.jpg", 1, 0.9, "ok"), ("a", "a2.jpg", 2, 0.5, "ok"), ("b", "b1.jpg", 3, 0.8, "ok"),
                        ("c", "c1.jpg", 4, 0.9, "ok")])
    assert store.publish_version("staff", first, _report())["version"] == 1
    v1 = store.load("staff", 1)
    assert {m["source_uri"]: m["used"] for m in store.members("staff", 1, ["a"])} == {
        "file:///photos/a1.jpg": True, "file:///photos/a2.jpg": False}
    assert store.enrolment_photos("staff", 1, ["a"])["a"][0]["source_uri"] == "file:///photos/a1.jpg"
    delta = _enrolment([("b", "b2.jpg", 5, 0.9, "ok"), ("d", "d1.jpg", 6, 0.9, "ok"),
                        ("c", "c2.jpg", 7, None, "error")], job_id="delta")
    report = store.publish_version("staff", delta, _report(), update=True, duplicate_similarity=0.99)
    assert report["version"] == 2 and report["kind"] == "delta" and report["base_version"] == 1
    assert report["changes"] == {"added": ["d"], "updated": ["b"], "removed": [], "kept_previous": ["c"],
                                 "unchanged": 2}
    v2 = store.load("staff", 2)
    assert v2.employee_ids == ["a", "b", "c", "d"]
    for employee in ("a", "c"):  # carried over bit for bit (c: its new image was unusable)
        assert v2.templates[v2.index()[employee]].tobytes() == v1.templates[v1.index()[employee]].tobytes()
    np.testing.assert_allclose(v2.templates[v2.index()["b"]], _unit(5), atol=1e-6)
    assert [m["job_id"] for m in store.members("staff", 2, ["b"])] == ["delta"]
    assert [m["source_uri"] for m in store.members("staff", 2, ["c"])] == ["file:///photos/c1.jpg"]
    assert store.info("staff", 2)["n_employees"] == 4 and store.info("staff", 1)["n_employees"] == 3
    # the gallery's mode and model are the delta's or it is refused
    with pytest.raises(JobError, match="enrolled in crop mode"):
        store.publish_version("staff", delta, _report(mode="detect"), update=True)
    with pytest.raises(JobError, match="different models"):
        store.publish_version("staff", _enrolment([("e", "e.jpg", 8, 0.9, "ok")], model="m2"),
                              _report(model="m2"), update=True)
    with pytest.raises(JobError, match="Use --mode crop"):
        store.check_mode("staff", "detect")
    assert store.mode_warnings("staff", 2, "detect") and not store.mode_warnings("staff", 2, "crop")
    # removal
    removed = store.remove("staff", ["a", "d"], by="hr")
    assert removed["version"] == 3 and removed["changes"]["removed"] == ["a", "d"] and removed["mode"] == "crop"
    assert store.load("staff", 3).employee_ids == ["b", "c"] and not store.members("staff", 3, ["a"])
    with pytest.raises(JobError, match="has no employee zz"):
        store.remove("staff", ["b", "zz"])
    with pytest.raises(JobError, match="empty"):
        store.remove("staff", ["b", "c"])
    assert store.versions("staff") == [1, 2, 3] and store.names() == ["staff"]


def test_versions_written_before_members_and_mode_were_recorded_still_work(tmp_path):
    store = GalleryStore(open_storage((tmp_path / "store").as_uri()))
    rows = [{"employee_id": "a", "item_id": "a1", "status": "ok", "error": None, "quality": 0.9,
             "embedding": _unit(1)}]
    store.publish("old", build_enrolment(rows, 0.6, 0.9, "m1"), {})  # no mode, no members
    store.storage.delete_prefix("galleries/old/v1/members.parquet")
    assert store.members("old") == [] and store.info("old")["mode"] is None
    store.check_mode("old", "detect")  # unknown mode: not refused
    report = store.publish_version("old", build_enrolment(rows, 0.6, 0.9, "m1"), _report(), update=True)
    assert report["changes"]["updated"] == ["a"] and store.info("old")["mode"] == "crop"
