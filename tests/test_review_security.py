"""Issue 22: the review server and the pages people open keep the workers' trust boundaries.

Real processes throughout: a redis-server, a worker (with its metrics port), ``faceq review``
as its own process spoken to over raw sockets, and headless Chromium for the pages' CSP. The
attendance job here is planned the way a plan written by someone else would be (straight
through ``submit``, past the producer's manifest checks): its items point outside the job's
allowed roots, and the worker wrote ``forbidden`` rows for them.
"""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from faceq import Client
from devstack.processes import free_port
from faceq.job.spec import Item
from faceq.storage.store import open_storage
from faceq.producer.submit import JobOptions
from tests.conftest import redis_and_worker, write_csv
from tests.dom import parse
from tests.test_attendance import checkin_photos
from tests.test_end_to_end import Stack

pytestmark = pytest.mark.integration

CHECKIN_COLUMNS = ["record_id", "employee_id", "image", "device_id", "captured_at"]
SCRIPT = "<script>document.body.setAttribute('data-pwned', 'yes')</script>"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    port = free_port()
    with redis_and_worker(tmp, "security-worker", (tmp / "store").as_uri(), FACEQ_MATCH_SIMILARITY="0.97",
                          FACEQ_MISMATCH_SIMILARITY="0.95", FACEQ_DUPLICATE_SIMILARITY="0.97",
                          FACEQ_CHUNK_SIZE="2", FACEQ_METRICS_PORT=str(port)) as (env, worker):
        yield Stack(env, open_storage((tmp / "store").as_uri()), worker), tmp, port


@pytest.fixture(scope="module")
def photos(stack) -> Path:
    return checkin_photos(stack[1] / "inside", 6)


@pytest.fixture(scope="module")
def gallery(stack, photos) -> str:
    st, tmp, _ = stack
    manifest = write_csv(tmp / "enrol.csv", ["employee_id", "image"], [["e1", str(photos / "f0.jpg")]])
    done = st.producer("enroll", str(manifest), "--gallery", "sec", "--job-id", "sec-enrol", "--wait", "--no-progress")
    assert done.returncode == 0, done.stderr
    return "sec"


@pytest.fixture(scope="module")
def forged(stack, photos, gallery) -> str:
    """An attendance job whose plan holds items outside its roots (the inside folder)."""
    st, tmp, _ = stack
    outside = tmp / "outside"
    outside.mkdir()
    shutil.copy(photos / "f1.jpg", outside / "secret-face.jpg")
    client = Client.from_env(broker=st.env["FACEQ_BROKER_URL"], storage=st.env["FACEQ_STORAGE_URL"])
    fields = {"employee_id": "e9", "device_id": "gate-1", "captured_at": "2026-11-24T08:00:00Z"}
    items = [Item("r-in", (photos / "f2.jpg").as_uri(), fields),  # read: not enrolled, flagged
             Item("r-out", (outside / "secret-face.jpg").as_uri(), fields),
             Item("r-bucket", "s3://other-bucket/face.jpg", fields),
             Item("r-team-b", "s3://photos/team-b/secret.jpg", fields)]
    client._submit(items, (photos / "forged.csv").as_uri(), (photos.as_uri(), "s3://photos/team-a/"),
                   "sec-forged", JobOptions("attendance", gallery=gallery, mode="crop"), False)
    client.job("sec-forged").wait(timeout=180)
    rows = {r["item_id"]: r for r in st.rows("sec-forged").drop_columns(["embedding"]).to_pylist()}
    assert {k: (r["error"] or "").split(":")[0] for k, r in rows.items()} == {
        "r-in": "", "r-out": "forbidden", "r-bucket": "forbidden", "r-team-b": "forbidden"}
    return "sec-forged"


class ReviewProcess:
    """``faceq review JOB`` in its own process; requests over plain sockets."""

    def __init__(self, st: Stack, job_id: str):
        self.process = subprocess.Popen([sys.executable, "-m", "faceq.producer", "review", job_id, "--reviewer", "sec"],
                                        env=st.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)(/[^/\s]+/)", line)
        assert match, line + self.process.stderr.read()
        self.port, self.base = int(match.group(1)), match.group(2)
        self.origin = f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request(method, self.base + path, body=body,
                           headers={"Host": f"127.0.0.1:{self.port}", **headers})
        response = connection.getresponse()
        return response.status, response.read()

    def raw(self, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
        """Send a hand-written request; the response's first line (b"" if the connection dropped)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(head + body)
            try:
                return sock.makefile("rb").readline()
            except ConnectionResetError:
                return b""

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def review(stack, forged):
    server = ReviewProcess(stack[0], forged)
    yield server
    server.close()


def test_the_photo_route_serves_only_listed_rows_read_by_the_worker_under_the_allow_list(review, photos):
    status, body = review.request("GET", "")
    assert status == 200
    listed = {a.attrs["data-item-id"] for a in parse(body.decode()).find_all("article", "item")}
    assert listed == {"r-in", "r-out", "r-bucket", "r-team-b"}  # the forbidden rows are in the queue
    assert review.request("GET", "photo?item=r-in&face=0")[0] == 200
    for item in ("r-out", "r-bucket", "r-team-b"):  # without the fix: 200 image/jpeg (r-out, a local file)
        assert review.request("GET", f"photo?item={quote(item)}&face=0")[0] == 404
    # a listed, read row whose file became a link out of the allowed roots: refused, not followed
    checkin = photos / "f2.jpg"
    kept = checkin.read_bytes()
    checkin.unlink()
    checkin.symlink_to(photos.parent / "outside" / "secret-face.jpg")
    try:
        assert review.request("GET", "photo?item=r-in&face=0")[0] == 404
    finally:
        checkin.unlink()
        checkin.write_bytes(kept)


def _verdict_head(review: ReviewProcess, length: str | None, extra: str = "") -> bytes:
    lines = [f"POST {review.base}verdict HTTP/1.1", f"Host: 127.0.0.1:{review.port}", f"Origin: {review.origin}",
             "Content-Type: application/x-www-form-urlencoded"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + extra + "\r\n\r\n").encode()


def test_content_length_is_checked_before_any_body_is_read(review):
    statuses = {length: review.raw(_verdict_head(review, length), b"verdict=x") for length in
                ("abc", "-1", "+9", "1e3", "99999999999999999999", "20000")}
    assert {k: v.split(b" ")[1] for k, v in statuses.items()} == {  # without the fix: b"" (dropped), or a hang
        "abc": b"400", "-1": b"400", "+9": b"400", "1e3": b"400", "99999999999999999999": b"400", "20000": b"413"}
    assert review.raw(_verdict_head(review, None))[9:12] == b"411"
    assert review.raw(_verdict_head(review, None, "\r\nTransfer-Encoding: chunked"), b"0\r\n\r\n")[9:12] == b"411"
    assert review.raw(_verdict_head(review, "9", "\r\nContent-Length: 9999"), b"verdict=x")[9:12] == b"400"
    # a 200 MB body behind Content-Length: -1 is answered at once and never read into memory
    before = review.rss_mb()
    with socket.create_connection(("127.0.0.1", review.port), timeout=10) as sock:
        sock.sendall(_verdict_head(review, "-1") + b"a" * 65536)
        assert sock.makefile("rb").readline().split(b" ")[1] == b"400"  # without the fix: a timeout here
        sent = 0
        try:
            while sent < 200 << 20:
                sock.sendall(b"a" * (1 << 20))
                sent += 1 << 20
        except OSError:  # the server closed the connection
            pass
    assert review.rss_mb() - before < 20
    assert review.request("GET", "")[0] == 200  # still serving


def test_verdicts_need_this_exact_origin(review, forged, stack):
    form = urlencode({"item_id": "r-in", "verdict": "confirmed", "back": "", "anchor": ""}).encode()
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    for origin in ("null", "http://127.0.0.1", "http://127.0.0.1:1", "http://evil.example", f"{review.origin}/"):
        assert review.request("POST", "verdict", form, Origin=origin, **ctype)[0] == 403, origin
    assert review.request("POST", "verdict", form, **ctype)[0] == 403  # none
    client = Client.from_env(broker=stack[0].env["FACEQ_BROKER_URL"], storage=stack[0].env["FACEQ_STORAGE_URL"])
    assert not client.job(forged).verdicts()
    assert review.request("POST", "verdict", form, Origin=review.origin, **ctype)[0] == 303
    assert [v["verdict"] for v in client.job(forged).verdicts()] == ["confirmed"]


def _chromium_dom(page: Path, profile: Path) -> object:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    return parse(done.stdout)


def _injected(page: str) -> str:
    """The page as if an escaping bug let a script through, right after <body>."""
    assert page.count("<body>") == 1
    return page.replace("<body>", "<body>" + SCRIPT)


def test_pages_faceq_writes_run_no_injected_script_in_chromium(stack, forged, gallery, tmp_path):
    st, _, _ = stack
    photos_page = tmp_path / "e1.html"
    done = st.producer("gallery", "photos", gallery, "e1", "--out", str(photos_page))
    assert done.returncode == 0, done.stderr
    pages = {"report": st.output(forged, "report"), "photos": photos_page.read_text()}
    for name, page in pages.items():
        assert "http-equiv='Content-Security-Policy'" in page and "script-src" not in page, name
        hostile = tmp_path / f"{name}-injected.html"
        hostile.write_text(_injected(page))
        body = _chromium_dom(hostile, tmp_path / f"profile-{name}").find("body")
        assert body.attrs.get("data-pwned") is None, name  # without the CSP: the script runs
        assert body.find("img") is not None  # the embedded (data:) photos still load
    # the control: the same injection without the policy runs (the check can see a script run)
    control = tmp_path / "control.html"
    control.write_text(_injected(re.sub(r"<meta http-equiv='Content-Security-Policy'[^>]*>", "", pages["photos"])))
    assert _chromium_dom(control, tmp_path / "profile-control").find("body").attrs.get("data-pwned") == "yes"


def _threads(pid: int) -> int:
    return int(re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def test_idle_connections_do_not_grow_the_worker_and_health_still_answers(stack):
    st, _, port = stack
    pid = st.worker.process.pid

    def healthz() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        return connection.getresponse().status

    assert healthz() == 200
    before = _threads(pid)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(800)]
    try:
        for sock in idle[::2]:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a slowloris: a head never finished
        time.sleep(1)
        during = _threads(pid)
        started = time.monotonic()
        assert healthz() == 200 and time.monotonic() - started < 2
        assert during - before <= 6, (before, during)  # without the fix: +800 threads
    finally:
        for sock in idle:
            sock.close()
    assert healthz() == 200


def _enrol(st: Stack, tmp: Path, name: str, rows: list[list[str]], *args: str):
    manifest = write_csv(tmp / f"{name}.csv", ["employee_id", "image"], rows)
    return st.producer("enroll", str(manifest), "--gallery", "sec", *args, "--job-id", name, "--wait", "--no-progress")


def test_invisible_and_look_alike_employee_ids_are_refused(stack, photos, gallery):
    st, tmp, _ = stack
    image = str(photos / "f3.jpg")
    for bad, code in (("e\u200b1", "U+200B"), ("\u202ee1", "U+202E"), ("e\x071", "U+0007")):
        done = _enrol(st, tmp, "sec-bad", [["e7", image], [bad, image]])
        assert done.returncode == 1 and "sec-bad.csv:3: employee_id" in done.stderr
        assert code in done.stderr and done.stderr.count("\n") == 1, done.stderr
    cyrillic = "\u0435\u0031"  # CYRILLIC SMALL LETTER IE, then 1
    same = _enrol(st, tmp, "sec-alike", [["e7", image], [cyrillic, image], ["e1", str(photos / "f4.jpg")]])
    assert same.returncode == 1, same.stderr
    assert f"sec-alike.csv:4: employee_id 'e1' looks like '{cyrillic}' = '\\u04351' (line 3)" in same.stderr
    assert not st.storage.exists("jobs/sec-alike/current.json")  # nothing planned
    # a delta that adds a look-alike of an enrolled employee: refused when the version is built
    delta = _enrol(st, tmp, "sec-delta", [[cyrillic, image]], "--update")
    assert delta.returncode != 0
    assert f"employee ids '{cyrillic}' = '\\u04351' and 'e1' look alike" in delta.stdout + delta.stderr
    # NFC: a decomposed é is the same employee as a composed one
    nfc = _enrol(st, tmp, "sec-nfc", [["e\u0301x", image], ["\u00e9x", str(photos / "f5.jpg")]], "--update")
    assert nfc.returncode == 0, nfc.stderr
    client = Client.from_env(broker=st.env["FACEQ_BROKER_URL"], storage=st.env["FACEQ_STORAGE_URL"])
    assert len(client.enrolment_photos(gallery, "\u00e9x")) == 2  # one employee, both photos
