"""The review loop end to end: a gallery, attendance with flagged check-ins through a real
worker, the review queue in report.html (checked in the DOM, not pixels) and review.csv,
verdicts through the client and the CLI shown in a later job's report, and gallery upkeep:
delta enrolment, removal, listing, enrolment photos, and the enrolment mode enforced.

Seeded random weights: the thresholds are set as in test_attendance.py, where a same-image
check-in is a match and another drawn face a mismatch.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from faceq import Client
from faceq.errors import JobError
from faceq.gallery import GalleryStore
from faceq.outputs.results import read_parquet
from tests.conftest import needs_yunet, write_csv
from tests.dom import parse
from tests.test_attendance import checkin_photos, gallery_stack

pytestmark = pytest.mark.integration

CHECKIN_COLUMNS = ["record_id", "employee_id", "image", "device_id", "captured_at"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from gallery_stack(tmp_path_factory, "review")


@pytest.fixture(scope="module")
def photos(stack) -> Path:
    return checkin_photos(stack[1] / "photos", 8)


@pytest.fixture(scope="module")
def client(stack) -> Client:
    st, _ = stack
    return Client.from_env(broker=st.env["FACEQ_BROKER_URL"], storage=st.env["FACEQ_STORAGE_URL"])


@pytest.fixture(scope="module")
def gallery(stack, photos) -> str:
    """Gallery ``rev`` v1: e1 ← f0, e2 ← f1 + f2, e3 ← f3, e4 ← f4 (crop mode)."""
    st, tmp = stack
    manifest = write_csv(tmp / "enrol.csv", ["employee_id", "image"], [
        ["e1", str(photos / "f0.jpg")], ["e2", str(photos / "f1.jpg")], ["e2", str(photos / "f2.jpg")],
        ["e3", str(photos / "f3.jpg")], ["e4", str(photos / "f4.jpg")]])
    done = st.producer("enroll", str(manifest), "--gallery", "rev", "--job-id", "rev-enrol-1", "--wait",
                       "--no-progress")
    assert done.returncode == 0, done.stderr
    return "rev"


CHECKINS = {  # record_id → (claimed, photo, device, captured_at, expected decision)
    "r-same": ("e1", "f0", "gate-1", "2026-11-24T08:00:00Z", "match"),
    "r-other": ("e1", "f3", "gate-1", "2026-11-24T08:01:00Z", "mismatch"),  # e3's face
    "r-other-2": ("e3", "f0", "gate-2", "2026-11-24T08:02:00Z", "mismatch"),  # e1's face
    "r-unenrolled": ("e9", "f1", "gate-2", "2026-11-24T08:03:00Z", "not_enrolled"),
    "r-broken": ("e2", "truncated", "gate-2", "2026-11-24T08:04:00Z", "error"),
}


@pytest.fixture(scope="module")
def attendance(stack, photos, gallery) -> str:
    st, tmp = stack
    manifest = write_csv(tmp / "checkins.csv", CHECKIN_COLUMNS, [
        [record, claimed, str(photos / f"{photo}.jpg"), device, captured]
        for record, (claimed, photo, device, captured, _) in CHECKINS.items()])
    done = st.producer("attendance", str(manifest), "--gallery", gallery, "--top-k", "3", "--job-id", "rev-att-1",
                       "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    return "rev-att-1"


def _articles(report: str) -> dict[str, object]:
    dom = parse(report)
    return {a.attrs["data-item-id"]: a for a in dom.find_all("article", "item")}


def test_every_flagged_check_in_is_in_the_review_queue_with_what_a_reviewer_needs(stack, attendance):
    st, _ = stack
    rows = {r["item_id"]: r for r in st.rows(attendance).drop_columns(["embedding"]).to_pylist()}
    assert {k: r["decision"] for k, r in rows.items()} == {k: v[4] for k, v in CHECKINS.items()}
    flagged = {k for k, r in rows.items() if r["needs_review"]}
    assert flagged == {"r-other", "r-other-2", "r-unenrolled", "r-broken"}
    report = st.output(attendance, "report")
    articles = _articles(report)
    assert set(articles) == flagged  # every flagged item, nothing else
    for item_id, article in articles.items():
        claimed, _, device, captured, decision = CHECKINS[item_id]
        assert article.find("dd", "claimed-employee").text() == claimed
        when = article.find("dd", "captured-at").find("time")  # for people, the ISO form kept on the element
        assert when.text() == captured.replace("T", " ").replace("Z", " UTC")
        assert when.attrs["datetime"] == captured.replace("Z", "+00:00")
        assert article.find("dd", "device").text() == device
        assert article.attrs["data-section"] == decision
        assert article.find(cls="reason").text() and article.find(cls="action").text().startswith("What to do:")
        row = rows[item_id]
        candidates = article.find_all("li", "candidate")
        if decision == "error":  # nothing to compare: said so, no photo to show
            assert not candidates and article.find(cls="no-candidates") is not None
            assert "could not be read" in article.find(cls="reason").text()
            continue
        # the check-in photo, larger, linked to the full image
        link = article.find("a", "full-image")
        assert link is not None and link.attrs["href"] == row["source_uri"]
        assert link.find("img", "checkin-photo").attrs["src"].startswith("data:image/jpeg;base64,")
        # the top-k candidates with their scores and photos
        assert [c.attrs["data-employee-id"] for c in candidates] == row["top_k_ids"] and len(candidates) == 3
        for candidate, score in zip(candidates, row["top_k_scores"]):
            assert candidate.find(cls="candidate-score").text() == f"{score:.3f}"
            assert candidate.find("img", "candidate-photo").attrs["src"].startswith("data:image/jpeg;base64,")
        # the claimed employee's reference (enrolment) photo
        reference = article.find("figure", "reference")
        assert reference.attrs["data-employee-id"] == claimed
        if decision == "not_enrolled":
            assert reference.find("img") is None and "not in the gallery" in reference.text()
        else:
            assert reference.find("img", "reference-photo").attrs["src"].startswith("data:image/jpeg;base64,")
    # plain language, not machine tokens; sections by action, most urgent first
    mismatch = articles["r-other"]
    assert "does not look like the claimed employee" in mismatch.find(cls="reason").text()
    assert "Looks most like e3" in mismatch.find(cls="reason").text()
    assert "Check ID" in mismatch.find(cls="action").text()
    dom = parse(report)
    sections = [s.attrs["id"] for s in dom.find_all("section", "queue")]
    assert sections == ["s-mismatch", "s-not_enrolled", "s-error"]
    assert dom.find("section", id="s-mismatch").attrs["data-count"] == "2"
    by_employee = dom.find("h3", id="by-employee")
    assert by_employee is not None and "e1" in report and "e9" in report


def test_review_csv_has_the_same_columns_top_k_included(stack, attendance):
    st, _ = stack
    review = list(csv.DictReader(io.StringIO(st.output(attendance, "review"))))
    by_id = {r["item_id"]: r for r in review}
    assert set(by_id) == {"r-other", "r-other-2", "r-unenrolled", "r-broken"}
    rows = {r["item_id"]: r for r in st.rows(attendance).drop_columns(["embedding"]).to_pylist()}
    for item_id, line in by_id.items():
        claimed, _, device, captured, decision = CHECKINS[item_id]
        assert (line["employee_id"], line["device_id"], line["decision"], line["section"]) == \
            (claimed, device, decision, decision)
        assert line["captured_at_raw"] == captured
        assert line["reason"] and line["action"]
        if rows[item_id]["top_k_ids"]:
            assert line["top_k_ids"] == ";".join(rows[item_id]["top_k_ids"])
            assert line["top_k_scores"] == ";".join(f"{s:.4f}" for s in rows[item_id]["top_k_scores"])
    assert by_id["r-other"]["action"].startswith("Check ID")


def test_verdicts_round_trip_through_client_and_cli_and_show_up_later(stack, client, photos, attendance):
    st, tmp = stack
    job = client.job(attendance)
    stored = job.record_verdict("r-other", "rejected", "not e1: it is e3 checking in", reviewer="alice")
    assert stored["verdict"] == "rejected" and stored["employee_id"] == "e1" and stored["decision"] == "mismatch"
    done = st.producer("verdict", attendance, "r-unenrolled", "retake", "--note", "new starter", "--reviewer", "bob")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reviewer"] == "bob"
    done = st.producer("verdict", attendance, "r-other", "confirmed", "--note", "=changed my mind",
                       "--reviewer", "alice")
    assert done.returncode == 0, done.stderr
    history = job.verdicts()
    assert [(v["item_id"], v["verdict"], v["reviewer"]) for v in history] == [
        ("r-other", "rejected", "alice"), ("r-unenrolled", "retake", "bob"), ("r-other", "confirmed", "alice")]
    latest = {v["item_id"]: v["verdict"] for v in job.verdicts(latest=True)}
    assert latest == {"r-other": "confirmed", "r-unenrolled": "retake"}
    listed = st.producer("verdicts", attendance, "--latest")
    assert listed.returncode == 0 and {v["item_id"] for v in json.loads(listed.stdout)} == {"r-other", "r-unenrolled"}
    assert st.storage.exists(f"jobs/{attendance}/verdicts.parquet")
    # refused: an unknown verdict (usage), an unknown item, a job that does not exist
    assert st.producer("verdict", attendance, "r-other", "maybe").returncode == 2
    unknown = st.producer("verdict", attendance, "r-nope", "confirmed", "--reviewer", "bob")
    assert unknown.returncode == 1 and "no item 'r-nope'" in unknown.stderr
    with pytest.raises(JobError, match="no job"):
        client.job("no-such-job").record_verdict("x", "confirmed", reviewer="a")
    # the job's own report, regenerated, shows its verdicts
    regenerated = st.producer("report", attendance, "--regenerate", "--out", str(tmp / "regen.html"))
    assert regenerated.returncode == 0, regenerated.stderr
    article = _articles((tmp / "regen.html").read_text())["r-other"]
    assert "confirmed by alice" in article.find(cls="verdict").text()
    # a later job of the same gallery shows the earlier verdicts beside the same employee
    manifest = write_csv(tmp / "checkins-2.csv", CHECKIN_COLUMNS,
                    [["r2-other", "e1", str(photos / "f3.jpg"), "gate-1", "2026-11-25T08:01:00Z"]])
    done = st.producer("attendance", str(manifest), "--gallery", "rev", "--top-k", "2", "--job-id", "rev-att-2",
                       "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    article = _articles(st.output("rev-att-2", "report"))["r2-other"]
    prior = article.find(cls="prior-verdicts").text()
    assert "confirmed by alice (job rev-att-1)" in prior and "changed my mind" in prior
    (line,) = csv.DictReader(io.StringIO(st.output("rev-att-2", "review")))
    assert "rejected by alice" in line["prior_verdicts"] and "confirmed by alice" in line["prior_verdicts"]


def _templates(storage, name: str, version: int) -> dict[str, bytes]:
    table = read_parquet(storage.get_bytes(f"galleries/{name}/v{version}/gallery.parquet"))
    return {r["employee_id"]: np.asarray(r["template"], np.float32).tobytes() for r in table.to_pylist()}


def test_delta_enrolment_makes_a_version_with_exactly_the_changed_employees(stack, client, photos, gallery):
    st, tmp = stack
    store = GalleryStore(st.storage)
    base = store.current_version(gallery)
    before = _templates(st.storage, gallery, base)
    v_before = st.storage.get_bytes(f"galleries/{gallery}/v{base}/gallery.parquet")
    manifest = write_csv(tmp / "delta.csv", ["employee_id", "image"], [
        ["e2", str(photos / "f5.jpg")],  # updated: a new photo replaces e2's template
        ["e6", str(photos / "f6.jpg")],  # added
        ["e6", str(photos / "truncated.jpg")],  # rejected, reported
    ])
    done = st.producer("enroll", str(manifest), "--gallery", gallery, "--update", "--job-id", "rev-delta",
                       "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"against v{base}: added e6, updated e2; {len(before) - 1} unchanged" in done.stdout
    summary = st.summary("rev-delta")["gallery"]
    assert summary["version"] == base + 1 and summary["kind"] == "delta" and summary["base_version"] == base
    assert summary["changes"] == {"added": ["e6"], "updated": ["e2"], "removed": [], "kept_previous": [],
                                  "unchanged": len(before) - 1}
    after = _templates(st.storage, gallery, base + 1)
    assert set(after) == set(before) | {"e6"}
    changed = {e for e in after if after[e] != before.get(e)}
    assert changed == {"e2", "e6"}  # exactly the manifest's employees; the others carried over bit for bit
    assert st.storage.get_bytes(f"galleries/{gallery}/v{base}/gallery.parquet") == v_before  # immutable
    # which photos built which template
    photos_e2 = client.enrolment_photos(gallery, "e2")
    assert [p["source_uri"] for p in photos_e2] == [(photos / "f5.jpg").as_uri()] and photos_e2[0]["used"]
    assert {p["source_uri"] for p in client.enrolment_photos(gallery, "e2", version=base)} == {
        (photos / "f1.jpg").as_uri(), (photos / "f2.jpg").as_uri()}
    shown = st.producer("gallery", "show", gallery)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["version"] == base + 1 and info["mode"] == "crop" and info["model_id"]
    assert sorted(e["employee_id"] for e in info["employees"]) == sorted(after)
    old = json.loads(st.producer("gallery", "show", gallery, "--version", str(base)).stdout)
    assert old["version"] == base and "e6" not in {e["employee_id"] for e in old["employees"]}
    page = tmp / "e2.html"
    listed = st.producer("gallery", "photos", gallery, "e2", "--out", str(page))
    assert listed.returncode == 0, listed.stderr
    assert len(parse(page.read_text()).find_all("img", "checkin-photo")) == 1
    assert f"{gallery}, version {base + 1}" in page.read_text() and "the current version" in page.read_text()
    older = st.producer("gallery", "photos", gallery, "e2", "--version", str(base), "--out", str(page))
    assert older.returncode == 0, older.stderr
    assert f"version {base}</h1>" in page.read_text()
    assert f"not the current version (that is version {base + 1})" in page.read_text()
    assert gallery in json.loads(st.producer("galleries").stdout)
    report = parse(st.output("rev-delta", "report"))
    assert "e6" in report.text() and "updated" in report.text()


def test_removing_employees_makes_a_new_version_without_them(stack, client, gallery):
    st, _ = stack
    store = GalleryStore(st.storage)
    base = store.current_version(gallery)
    before = _templates(st.storage, gallery, base)
    done = st.producer("gallery", "remove", gallery, "e4")
    assert done.returncode == 0, done.stderr
    after = _templates(st.storage, gallery, base + 1)
    assert set(after) == set(before) - {"e4"} and all(after[e] == before[e] for e in after)
    info = store.info(gallery)
    assert info["kind"] == "remove" and info["changes"]["removed"] == ["e4"] and info["mode"] == "crop"
    assert not client.enrolment_photos(gallery, "e4")
    unknown = st.producer("gallery", "remove", gallery, "e4", "nobody")
    assert unknown.returncode == 1 and "nothing was changed" in unknown.stderr
    assert store.current_version(gallery) == base + 1


def test_attendance_in_another_mode_than_the_enrolment_is_refused(stack, client, photos, gallery):
    st, tmp = stack
    manifest = write_csv(tmp / "detect.csv", CHECKIN_COLUMNS,
                    [["r-d", "e1", str(photos / "f0.jpg"), "gate-1", "2026-11-24T08:00:00Z"]])
    done = st.producer("attendance", str(manifest), "--gallery", gallery, "--mode", "detect", "--job-id", "rev-detect",
                       "--no-progress")
    assert done.returncode == 1 and "enrolled in crop mode but this job uses detect mode" in done.stderr
    assert not st.storage.exists("jobs/rev-detect/current.json")  # nothing planned, nothing queued
    with pytest.raises(JobError, match="Use --mode crop"):
        client.attendance(manifest, gallery=gallery, mode="detect")
    with pytest.raises(JobError, match="enrolled in crop mode"):
        client.enroll(tmp / "delta.csv", gallery=gallery, mode="detect", update=True)


def _http(server, method: str, path: str, body: str | None = None, host: str | None = None, **headers: str):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Host": host or f"127.0.0.1:{server.port}", **headers}
    if body is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_the_local_review_page_pages_through_flags_and_records_verdicts(client, attendance):
    from urllib.parse import urlencode

    from PIL import Image

    from faceq.producer.review_server import ReviewServer

    server = ReviewServer(client, attendance, reviewer="carol", page_size=1).start()
    try:
        base = f"/{server.token}/"
        status, headers, body = _http(server, "GET", base)
        assert status == 200 and "script-src" not in headers["Content-Security-Policy"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        dom = parse(body.decode())
        articles = {a.attrs["data-item-id"]: a for a in dom.find_all("article", "item")}
        assert set(articles) == {"r-other", "r-unenrolled", "r-broken"}  # one per section on the first page
        form = articles["r-other"].find("form", "verdict-form")
        assert [b.attrs["value"] for b in form.find_all("button")] == ["confirmed", "rejected", "retake"]
        # the second impersonation flag is on the section's next page
        more = dom.find("a", "more").attrs["href"]
        status, _, body = _http(server, "GET", more)
        page = parse(body.decode())
        assert status == 200 and [a.attrs["data-item-id"] for a in page.find_all("article", "item")] == ["r-other-2"]
        assert page.find("a", "previous").attrs["href"] == f"{base}section/mismatch?page=1"
        assert page.find("a", "next") is None
        # a click on the check-in photo: the full image, from storage, as JPEG
        full = page.find("a", "full-image").attrs["href"]
        status, headers, data = _http(server, "GET", full)
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(data)).size == (140, 140)
        assert _http(server, "GET", f"{base}photo?item=r-same&face=0")[0] == 404  # not a row this page served
        # a verdict through the form
        fields = {i.attrs["name"]: i.attrs.get("value", "") for i in page.find_all("input")}
        fields.update(verdict="rejected", note="that is e1")
        origin = f"http://127.0.0.1:{server.port}"
        status, headers, _ = _http(server, "POST", f"{base}verdict", urlencode(fields), Origin=origin)
        assert status == 303 and headers["Location"] == f"{base}section/mismatch?page=2#item-0"
        (latest,) = [v for v in client.job(attendance).verdicts() if v["item_id"] == "r-other-2"]
        assert (latest["verdict"], latest["reviewer"], latest["note"]) == ("rejected", "carol", "that is e1")
        # back on the page: the item is marked, the queue counts it, its buttons sit in one group
        page = parse(_http(server, "GET", more)[2].decode())
        (article,) = page.find_all("article", "item")
        assert "reviewed: rejected by carol — that is e1" in article.find("p", "reviewed").text()
        assert len(article.find("span", "verdict-buttons").find_all("button")) == 3
        progress = page.find("p", "review-progress").text()
        done, total = map(int, re.search(r"(\d+) of (\d+) reviewed", progress).groups())
        assert 1 <= done <= total == 4
        # refused: no token, another host, another origin, a malformed form
        assert _http(server, "GET", "/")[0] == 404
        assert _http(server, "GET", base, host="evil.example:80")[0] == 421
        assert _http(server, "POST", f"{base}verdict", urlencode(fields), Origin="http://evil.example")[0] == 403
        assert _http(server, "POST", f"{base}verdict", urlencode({**fields, "verdict": "maybe"}),
                     Origin=origin)[0] == 400
        assert _http(server, "POST", f"{base}verdict", urlencode({**fields, "back": "//evil.example"}),
                     Origin=origin)[0] == 400
    finally:
        server.close()


def test_the_review_page_in_headless_chromium(client, attendance, tmp_path):
    """Smoke test: the served page loads in a real browser, with its items and forms."""
    import shutil
    import subprocess

    from faceq.producer.review_server import ReviewServer

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    server = ReviewServer(client, attendance, reviewer="dave").start()
    try:
        done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", server.url],
                              capture_output=True, text=True, timeout=120)
        dom = parse(done.stdout)
        articles = dom.find_all("article", "item")
        assert {a.attrs["data-item-id"] for a in articles} == {"r-other", "r-other-2", "r-unenrolled", "r-broken"}
        assert all(a.find("form", "verdict-form") is not None for a in articles)
        assert dom.find("a", "full-image").attrs["href"].startswith(f"/{server.token}/photo?item=")
    finally:
        server.close()


@needs_yunet
def test_a_multi_face_audit_lists_each_face_with_its_number(stack, tmp_path):
    from tests.photos import write_photos

    st, _ = stack
    write_photos(tmp_path / "photos")
    done = st.producer("audit", str(tmp_path / "photos"), "--job-id", "rev-faces", "--all-faces", "--wait",
                       "--no-progress")
    assert done.returncode == 0, done.stderr
    dom = parse(st.output("rev-faces", "report"))
    faces = [a for a in dom.find_all("article", "item") if a.attrs["data-item-id"] == "two-people.png"]
    assert [a.find("figure", "checkin").find("figcaption").text() for a in faces] == ["face 1 of 2", "face 2 of 2"]
    assert all(a.attrs["data-section"] == "multiple_faces" for a in faces)
    assert "face 2 of 2 (boxed)" in faces[1].find(cls="reason").text()
    (cat,) = [a for a in dom.find_all("article", "item") if a.attrs["data-item-id"] == "cat.jpg"]
    assert cat.attrs["data-section"] == "no_face" and "No face" in cat.find(cls="reason").text()
    review = list(csv.DictReader(io.StringIO(st.output("rev-faces", "review"))))
    assert sorted(r["face_index"] for r in review if r["item_id"] == "two-people.png") == ["0", "1"]
