"""faceq.producer.sources: streaming sources that never list, read or upload anything outside the job."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from faceq.storage.allow import AllowedSources
from faceq.errors import JobError, StorageError
from faceq.job.spec import Item
from faceq.storage.store import FileStorage, S3Storage
from faceq.producer import idset, sources
from faceq.producer.idset import SeenIds
from faceq.producer.sources import (
    ATTENDANCE_COLUMNS,
    ListingStats,
    LocalItem,
    iter_attendance_manifest,
    iter_directory,
    iter_enrolment_manifest,
    iter_manifest,
    iter_s3_prefix,
    stage_batch,
)

JPEG = b"\xff\xd8\xff\xe0jpeg"
HEADER = ",".join(ATTENDANCE_COLUMNS)

# ---------------------------------------------------------------------------- directories


@pytest.fixture
def audited(tmp_path: Path) -> Path:
    """An audited folder with photos, hidden files, and every hostile entry issue 9 names."""
    root = tmp_path / "audit"
    (root / "gate-1").mkdir(parents=True)
    (root / "gate-2" / "night").mkdir(parents=True)
    (root / ".cache").mkdir()
    for rel in ("b.jpg", "a.jpg", "gate-1/c.jpg", "gate-2/night/d.jpg", "gate-2/e.png", ".cache/x.jpg",
                "gate-1/.hidden.jpg"):
        (root / rel).write_bytes(JPEG)
    (root / "passwd_link.jpg").symlink_to("/etc/passwd")
    (root / "proc_environ_link.jpg").symlink_to("/proc/self/environ")
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "gate-1" / "alias.jpg").symlink_to(root / "a.jpg")  # stays inside: listed
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    (root / "outside_dir").symlink_to(outside)  # a symlinked directory: not followed
    (root / "etc_dir").symlink_to("/etc")
    os.mkfifo(root / "fifo.jpg")
    return root


@pytest.mark.timeout(10)
def test_iter_directory_lists_regular_files_in_sorted_order_and_skips_hostile_entries(audited):
    stats = ListingStats()
    items = list(iter_directory(audited, stats))
    assert [i.item_id for i in items] == [
        "a.jpg", "b.jpg", "gate-1/alias.jpg", "gate-1/c.jpg", "gate-2/e.png", "gate-2/night/d.jpg"]
    assert all(i.upload_name == i.item_id for i in items)
    real_root = audited.resolve()
    for item in items:
        assert item.path.is_file() and not item.path.is_symlink()
        assert real_root in item.path.parents
    alias = next(i for i in items if i.item_id == "gate-1/alias.jpg")
    assert alias.path == real_root / "a.jpg"  # read through its real path, inside the tree
    assert stats == ListingStats(files=6, skipped_links=5, skipped_special=1)


def test_iter_directory_order_matches_sorted_paths(tmp_path):
    names = ["a/b.jpg", "a.jpg", "a-b.jpg", "a/a/z.jpg", "B.jpg", "a0.jpg", "z/y/x.jpg", "ab.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(JPEG)
    assert [i.item_id for i in iter_directory(tmp_path)] == [p.as_posix() for p in sorted(map(Path, names))]


@pytest.mark.timeout(10)
def test_iter_directory_skips_sockets(tmp_path):
    with tempfile.TemporaryDirectory(prefix="fq") as name:
        root = Path(name)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(root / "sock.jpg"))
        server.close()
        (root / "a.jpg").write_bytes(JPEG)
        stats = ListingStats()
        assert [i.item_id for i in iter_directory(root, stats)] == ["a.jpg"]
        assert stats.skipped_special == 1


def test_iter_directory_is_lazy(tmp_path):
    for k in range(3):
        (tmp_path / f"{k}.jpg").write_bytes(JPEG)
    listing = iter_directory(tmp_path)
    assert isinstance(listing, Iterator)
    assert next(listing).item_id == "0.jpg"


def test_iter_directory_refuses_a_non_directory_at_once(tmp_path):
    (tmp_path / "f.jpg").write_bytes(JPEG)
    for root in (tmp_path / "f.jpg", tmp_path / "missing"):
        with pytest.raises(JobError, match="is not a directory"):
            iter_directory(root)


@pytest.mark.parametrize("content", ["nothing", "hidden_only", "hostile_links_only"])
def test_iter_directory_with_no_usable_files_is_a_job_error(tmp_path, content):
    if content == "hidden_only":
        (tmp_path / ".x.jpg").write_bytes(JPEG)
    if content == "hostile_links_only":
        (tmp_path / "passwd.jpg").symlink_to("/etc/passwd")
        os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(JobError, match="contains no files"):
        list(iter_directory(tmp_path))


# ---------------------------------------------------------------------------- S3 prefixes


class _Pages:
    """A stand-in boto3 client whose listing is two pages; records how far it was read."""

    def __init__(self, pages):
        self.pages = pages
        self.served = 0
        self.kwargs = None

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        return self

    def paginate(self, **kwargs):
        self.kwargs = kwargs
        for page in self.pages:
            self.served += 1
            yield page


def test_iter_s3_prefix_streams_page_by_page_and_skips_folder_markers():
    client = _Pages([
        {"Contents": [{"Key": "photos/"}, {"Key": "photos/a.jpg"}, {"Key": "photos/x/"}]},
        {"Contents": [{"Key": "photos/x/b.jpg"}]},
    ])
    listing = iter_s3_prefix("s3://bucket-1/photos", None, client=client)
    first = next(listing)
    assert (first.item_id, first.source_uri) == ("a.jpg", "s3://bucket-1/photos/a.jpg")
    assert client.served == 1  # the second page is not fetched yet
    assert client.kwargs == {"Bucket": "bucket-1", "Prefix": "photos/"}
    assert [i.item_id for i in listing] == ["x/b.jpg"]


def test_iter_s3_prefix_against_an_s3_server(s3_client, s3_endpoint, bucket):
    for key in ("in/a.jpg", "in/sub/b.jpg", "in/sub/", "inx/c.jpg", "other/d.jpg"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=JPEG)
    items = list(iter_s3_prefix(f"s3://{bucket}/in/", s3_endpoint))
    assert [(i.item_id, i.source_uri) for i in items] == [
        ("a.jpg", f"s3://{bucket}/in/a.jpg"), ("sub/b.jpg", f"s3://{bucket}/in/sub/b.jpg")]
    with pytest.raises(JobError, match="holds no objects"):
        list(iter_s3_prefix(f"s3://{bucket}/nothing-here/", s3_endpoint))
    with pytest.raises(JobError, match="cannot list"):
        list(iter_s3_prefix(f"s3://{bucket}-missing/x/", s3_endpoint))


@pytest.mark.parametrize("uri", ["s3:///x", "S3://bucket/x", "s3://Bad_Bucket/x", "s3://b/../x"])
def test_iter_s3_prefix_refuses_malformed_uris_at_once(uri):
    with pytest.raises(JobError):
        iter_s3_prefix(uri, None, client=_Pages([]))


# ---------------------------------------------------------------------------- manifests


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """tmp/photos: the manifest's folder (an allowed root), with a photo and planted symlinks."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(JPEG)
    (folder / "b.jpg").write_bytes(JPEG)
    (folder / "passwd_link.jpg").symlink_to("/etc/passwd")
    (folder / "environ_link.jpg").symlink_to("/proc/self/environ")
    return folder


@pytest.fixture
def allowed(photos: Path) -> AllowedSources:
    return AllowedSources.parse("s3://photos-bucket/", extra_roots=[photos])


def _manifest(folder: Path, text: str | bytes, name: str = "m.csv") -> Path:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_attendance_manifest_yields_local_and_s3_items_with_every_column(photos, allowed):
    path = _manifest(photos, "\ufeff" + HEADER + ",shift\r\n"
                     "r1,e1,a.jpg,gate-1,2024-05-01T08:00:00Z,early\r\n"
                     "\r\n"
                     "r2,e2,s3://photos-bucket/day/b.jpg,gate-2,,late\r\n"
                     f" r3 , e3 ,{photos / 'b.jpg'},gate-1,2024-05-01T08:01:00Z,\r\n")
    items = list(iter_attendance_manifest(path, allowed))
    assert items == [
        LocalItem("r1", photos / "a.jpg", "000002/a.jpg",
                  {"record_id": "r1", "employee_id": "e1", "device_id": "gate-1",
                   "captured_at": "2024-05-01T08:00:00Z", "shift": "early"}),
        Item("r2", "s3://photos-bucket/day/b.jpg",
             {"record_id": "r2", "employee_id": "e2", "device_id": "gate-2", "captured_at": "", "shift": "late"}),
        LocalItem("r3", photos / "b.jpg", "000005/b.jpg",
                  {"record_id": "r3", "employee_id": "e3", "device_id": "gate-1",
                   "captured_at": "2024-05-01T08:01:00Z", "shift": ""}),
    ]


def test_enrolment_ids_are_employee_and_image(photos, allowed):
    path = _manifest(photos, "employee_id,image\ne1,a.jpg\ne1,b.jpg\ne2,a.jpg\n")
    assert [i.item_id for i in iter_enrolment_manifest(path, allowed)] == ["e1/a.jpg", "e1/b.jpg", "e2/a.jpg"]
    dup = _manifest(photos, "employee_id,image\ne1,a.jpg\ne1,a.jpg\n", "dup.csv")
    with pytest.raises(JobError, match=r"dup.csv:3: duplicate id 'e1/a.jpg' \(first on line 2\)"):
        list(iter_enrolment_manifest(dup, allowed))


def _row(image: str = "a.jpg", record_id: str = "r1", employee_id: str = "e1") -> str:
    return f"{record_id},{employee_id},{image},gate-1,2024-05-01T08:00:00Z\n"


BIG = "x" * (10 << 20)

HOSTILE_MANIFESTS = [
    # (case, manifest bytes, expected line, message fragment)
    ("non-UTF-8 bytes", (HEADER + "\n" + _row()).encode() + b"r2,e\xff\xfe,b.jpg,g,t\n", 3, "not UTF-8 (byte 0xff"),
    ("latin-1 file", (HEADER + "\n").encode() + "r1,Jos\u00e9,a.jpg,g,t\n".encode("latin-1"), 2, "not UTF-8"),
    ("UTF-16 file", (HEADER + "\n" + _row()).encode("utf-16"), 1, "UTF-16"),
    ("10 MB field", (HEADER + "\n" + _row() + _row("a.jpg", "r2", BIG)).encode(), 3, "longer than"),
    ("10 MB quoted multi-line field",
     (HEADER + "\n" + 'r1,"' + "x\n" * (5 << 20) + '",a.jpg,g,t\n').encode(), 2, "longer than"),
    ("5000-character field", (HEADER + "\n" + _row("a.jpg", "r1", "e" * 5000)).encode(), 2,
     "a field longer than 4096 characters"),
    ("semicolon-delimited", (HEADER.replace(",", ";") + "\n" + _row().replace(",", ";")).encode(), 1,
     "one column containing ';': use commas"),
    ("tab-delimited", (HEADER.replace(",", "\t") + "\n" + _row().replace(",", "\t")).encode(), 1,
     "one column containing '\\t': use commas"),
    ("missing column", b"record_id,employee_id,image,device_id\nr1,e1,a.jpg,g\n", 1,
     "missing column(s) captured_at"),
    ("repeated column", (HEADER + ",image\n").encode(), 1, "repeated column(s) 'image'"),
    ("row with a missing cell", (HEADER + "\n" + _row() + "r2,e2,b.jpg,g\n").encode(), 3,
     "4 cell(s) but the header has 5"),
    ("row with an extra cell", (HEADER + "\n" + "r1,e1,a.jpg,g,t,extra\n").encode(), 2,
     "6 cell(s) but the header has 5"),
    ("empty record_id", (HEADER + "\n" + _row("a.jpg", "")).encode(), 2, "empty record_id"),
    ("empty image", (HEADER + "\n" + "r1,e1, ,g,t\n").encode(), 2, "empty image"),
    ("duplicate id", (HEADER + "\n" + _row() + _row("b.jpg", "r2") + _row("b.jpg", "r1")).encode(), 4,
     "duplicate id 'r1' (first on line 2)"),
    ("malformed quoting", (HEADER + "\n" + 'r1,"e1"x,a.jpg,g,t\n').encode(), 2, "malformed CSV"),
    ("unterminated quote", (HEADER + "\n" + 'r1,"e1,a.jpg,g,t\n').encode(), 2, "malformed CSV"),
    ("http image", (HEADER + "\n" + _row("http://evil.example/a.jpg")).encode(), 2, "image: unsupported scheme"),
    ("upper-case S3 scheme", (HEADER + "\n" + _row("S3://photos-bucket/a.jpg")).encode(), 2, "unsupported scheme 'S3'"),
    ("s3 without bucket", (HEADER + "\n" + _row("s3:///x")).encode(), 2, "needs a bucket"),
    ("file URI with a host", (HEADER + "\n" + _row("file://otherhost/photos/a.jpg")).encode(), 2, "no host"),
    ("NUL in image", (HEADER + "\n" + _row("a\x00.jpg")).encode(), 2, "control character"),
    ("path climbing out", (HEADER + "\n" + _row("../../../../etc/passwd")).encode(), 2, "outside the job's allowed"),
    ("file URI outside", (HEADER + "\n" + _row("file:///etc/shadow")).encode(), 2, "outside the job's allowed"),
    ("absolute path outside", (HEADER + "\n" + _row("/etc/hostname")).encode(), 2, "outside the job's allowed"),
    ("another bucket", (HEADER + "\n" + _row("s3://some-other-bucket/a.jpg")).encode(), 2,
     "outside the job's allowed"),
    ("symlink to /etc/passwd", (HEADER + "\n" + _row("passwd_link.jpg")).encode(), 2, "outside the job's allowed"),
    ("symlink to /proc/self/environ", (HEADER + "\n" + _row("environ_link.jpg")).encode(), 2,
     "outside the job's allowed"),
    ("header only", (HEADER + "\n").encode(), None, "has a header (line 1) but no rows"),
    ("blank lines only", (HEADER + "\n\n\n").encode(), None, "but no rows"),
    ("empty file", b"", None, "is empty"),
    ("BOM only", b"\xef\xbb\xbf", None, "is empty"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, content, line, fragment", HOSTILE_MANIFESTS, ids=[c[0] for c in HOSTILE_MANIFESTS])
def test_hostile_manifests_get_one_line_errors_with_line_numbers(photos, allowed, case, content, line, fragment):
    path = _manifest(photos, content)
    with pytest.raises(JobError) as info:
        list(iter_attendance_manifest(path, allowed))
    message = str(info.value)
    assert fragment in message
    assert message.startswith(f"{path}:{line}: " if line else str(path))
    assert "\n" not in message and len(message) < 400


def test_forbidden_images_name_the_allowed_roots_but_not_the_target(photos, allowed):
    path = _manifest(photos, HEADER + "\n" + _row("/etc/passwd"))
    with pytest.raises(JobError) as info:
        list(iter_attendance_manifest(path, allowed))
    assert "s3://photos-bucket/" in str(info.value) and "/etc/passwd" not in str(info.value)


def test_without_an_allow_list_images_are_still_made_canonical(photos):
    path = _manifest(photos, HEADER + "\n" + _row("passwd_link.jpg") + _row("s3://b-1/k.jpg", "r2"))
    local, remote = list(iter_attendance_manifest(path, None))
    assert local.path == Path("/etc/passwd")  # the real path: read_regular_file and the worker decide
    assert remote == Item("r2", "s3://b-1/k.jpg", remote.fields)
    bad = _manifest(photos, HEADER + "\n" + _row("http://x/y"), "bad.csv")
    with pytest.raises(JobError, match="bad.csv:2: image: unsupported scheme"):
        list(iter_attendance_manifest(bad, None))


def test_manifest_rows_stream_before_a_later_error(photos, allowed):
    rows = "".join(_row("a.jpg", f"r{k}") for k in range(1000)) + _row("/etc/passwd", "bad")
    listing = iter_attendance_manifest(_manifest(photos, HEADER + "\n" + rows), allowed)
    assert [next(listing).item_id for _ in range(3)] == ["r0", "r1", "r2"]
    with pytest.raises(JobError, match=r":1002: image is outside"):
        list(listing)


@pytest.mark.timeout(10)
def test_a_fifo_manifest_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "m.csv")
    with pytest.raises(JobError, match="not a regular file"):
        list(iter_attendance_manifest(tmp_path / "m.csv", None))
    with pytest.raises(JobError, match="no such file"):
        list(iter_attendance_manifest(tmp_path / "missing.csv", None))


def test_hash_collisions_are_confirmed_before_reporting_a_duplicate(photos, allowed, monkeypatch):
    monkeypatch.setattr(idset, "id_hash", lambda item_id: 42)  # every id collides
    path = _manifest(photos, HEADER + "\n" + _row("a.jpg", "r1") + _row("a.jpg", "r2") + _row("b.jpg", "r3"))
    assert [i.item_id for i in iter_attendance_manifest(path, allowed)] == ["r1", "r2", "r3"]
    dup = _manifest(photos, HEADER + "\n" + _row("a.jpg", "r1") + _row("a.jpg", "r2") + _row("b.jpg", "r1"), "d.csv")
    with pytest.raises(JobError, match="d.csv:4: duplicate id 'r1'"):
        list(iter_attendance_manifest(dup, allowed))


def test_a_custom_manifest_keeps_extra_columns_and_custom_required_ones(photos, allowed):
    path = _manifest(photos, "id,image,label\nx1,a.jpg,cat\nx2,b.jpg,\n")
    items = list(iter_manifest(path, ("id", "image"), lambda row: row["id"], allowed, non_empty=("id", "image")))
    assert [(i.item_id, i.fields) for i in items] == [("x1", {"id": "x1", "label": "cat"}),
                                                      ("x2", {"id": "x2", "label": ""})]


def test_an_s3_manifest_is_streamed_and_resolves_relative_images_in_its_folder(s3_client, s3_endpoint, bucket):
    body = HEADER + "\n" + _row("a.jpg") + _row("sub/b.jpg", "r2") + _row(f"s3://{bucket}/elsewhere/c.jpg", "r3")
    s3_client.put_object(Bucket=bucket, Key="day/m.csv", Body=body.encode())
    allowed = AllowedSources.parse(f"s3://{bucket}/")
    items = list(iter_attendance_manifest(f"s3://{bucket}/day/m.csv", allowed, s3_endpoint))
    assert [i.source_uri for i in items] == [
        f"s3://{bucket}/day/a.jpg", f"s3://{bucket}/day/sub/b.jpg", f"s3://{bucket}/elsewhere/c.jpg"]
    s3_client.put_object(Bucket=bucket, Key="day/bad.csv", Body=(HEADER + "\n" + _row("../../x.jpg")).encode())
    with pytest.raises(JobError, match=rf"s3://{bucket}/day/bad.csv:2: image: '.' and '..'"):
        list(iter_attendance_manifest(f"s3://{bucket}/day/bad.csv", allowed, s3_endpoint))
    with pytest.raises(JobError, match="cannot read manifest"):
        list(iter_attendance_manifest(f"s3://{bucket}/day/missing.csv", allowed, s3_endpoint))


# ---------------------------------------------------------------------------- duplicate ids


def test_seen_ids_find_repeats_and_stay_small():
    seen = SeenIds()
    n = 200_000
    for k in range(n):
        assert seen.add(f"record-{k:08d}", k + 2) is None
    assert len(seen) == n
    assert seen.add("record-00000007", 999) == 9
    assert seen.add("record-00199999", 999) == n + 1
    assert seen.nbytes / n <= 40


# ---------------------------------------------------------------------------- staging


class _RemoteStore:
    """A remote storage stand-in that records every upload."""

    url = "s3://store-bucket/faceq"
    is_local = False

    def __init__(self, fail: bool = False):
        self.objects: dict[str, bytes] = {}
        self.fail = fail

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        if self.fail:
            raise StorageError("cannot write s3://store-bucket/faceq/x via redis://:S3cretPW@h")
        self.objects[key] = data
        return f"{self.url}/{key}"


@pytest.mark.timeout(20)
def test_stage_batch_uploads_only_regular_files_and_never_kernel_or_outside_content(tmp_path):
    (tmp_path / "a.jpg").write_bytes(JPEG)
    (tmp_path / "big.jpg").write_bytes(b"x" * 2048)
    (tmp_path / "passwd_link.jpg").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "fifo.jpg")
    hostile = {
        "passwd": tmp_path / "passwd_link.jpg",  # a LocalItem pointing at a symlink (never followed)
        "environ": Path("/proc/self/environ"),
        "zero": Path("/dev/zero"),
        "fifo": tmp_path / "fifo.jpg",
        "big": tmp_path / "big.jpg",
        "missing": tmp_path / "missing.jpg",
    }
    items = [LocalItem("a", tmp_path / "a.jpg", "000002/a.jpg", {"k": "v"}), Item("s", "s3://photos-bucket/x.jpg")]
    items += [LocalItem(name, path, f"{name}.jpg") for name, path in hostile.items()]
    store = _RemoteStore()
    with ThreadPoolExecutor(4) as pool:
        staged = stage_batch(items, store, "jobs/j1/runs/r1/inputs/", pool, max_bytes=1024)
    assert store.objects == {"jobs/j1/runs/r1/inputs/000002/a.jpg": JPEG}
    assert staged[0] == Item("a", "s3://store-bucket/faceq/jobs/j1/runs/r1/inputs/000002/a.jpg", {"k": "v"})
    assert staged[1] == items[1]
    assert [(i.item_id, i.source_uri) for i in staged[2:]] == [(n, p.as_uri()) for n, p in hostile.items()]


def test_stage_batch_with_local_storage_keeps_file_uris(tmp_path):
    (tmp_path / "a.jpg").write_bytes(JPEG)
    items = [LocalItem("a", tmp_path / "a.jpg", "a.jpg", {"f": "1"}), Item("s", "s3://b-1/k")]
    with ThreadPoolExecutor(2) as pool:
        staged = stage_batch(items, FileStorage(tmp_path / "store"), "jobs/j/runs/r/inputs/", pool)
    assert staged == [Item("a", (tmp_path / "a.jpg").as_uri(), {"f": "1"}), Item("s", "s3://b-1/k")]


def test_stage_batch_upload_failure_is_a_redacted_job_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(JPEG)
    with ThreadPoolExecutor(2) as pool, pytest.raises(JobError) as info:
        stage_batch([LocalItem("a", tmp_path / "a.jpg", "a.jpg")], _RemoteStore(fail=True), "in/", pool)
    assert "S3cretPW" not in str(info.value) and "cannot upload inputs" in str(info.value)


def test_stage_batch_uploads_to_an_s3_server(tmp_path, s3_client, s3_endpoint, bucket):
    (tmp_path / "a.jpg").write_bytes(JPEG)
    (tmp_path / "link.jpg").symlink_to("/etc/passwd")
    store = S3Storage(bucket, "faceq", endpoint_url=s3_endpoint)
    items = [LocalItem("a", tmp_path / "a.jpg", "000002/a.jpg"), LocalItem("l", tmp_path / "link.jpg", "l.jpg")]
    with ThreadPoolExecutor(2) as pool:
        staged = stage_batch(items, store, "jobs/j1/runs/r1/inputs/", pool)
    assert staged[0].source_uri == f"s3://{bucket}/faceq/jobs/j1/runs/r1/inputs/000002/a.jpg"
    assert staged[1].source_uri == (tmp_path / "link.jpg").as_uri()
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["faceq/jobs/j1/runs/r1/inputs/000002/a.jpg"]


def test_compatibility_wrappers_return_lists(photos, allowed):
    path = _manifest(photos, HEADER + "\n" + _row())
    assert [i.item_id for i in sources.read_attendance_manifest(path, allowed)] == ["r1"]
    assert [i.item_id for i in sources.list_directory(photos)] == ["a.jpg", "b.jpg", "m.csv"]
