"""faceq.storage.localfiles: only regular files are read, never through a final symlink, never past the cap."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest

from faceq.storage import localfiles
from faceq.errors import BadInputError
from faceq.storage.localfiles import open_regular_file, read_regular_file


def test_reads_a_regular_file_up_to_the_cap(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(path, 100) == b"x" * 100
    assert read_regular_file(path, None) == b"x" * 100
    assert read_regular_file(tmp_path / "a.jpg", 1000) == b"x" * 100


def test_an_empty_file_is_read_as_empty(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert read_regular_file(tmp_path / "empty", 10) == b""


def test_one_byte_over_the_cap_is_too_large(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 101)
    with pytest.raises(BadInputError) as info:
        read_regular_file(path, 100)
    assert info.value.code == "too_large"


def test_a_huge_sparse_file_is_refused_without_allocating_it(tmp_path):
    path = tmp_path / "huge.jpg"
    with path.open("wb") as fh:
        fh.truncate(4 << 30)  # 4 GiB, sparse
    tracemalloc.start()
    try:
        with pytest.raises(BadInputError, match="too_large"):
            read_regular_file(path, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_the_cap_holds_while_reading_a_file_that_lies_about_its_size(monkeypatch):
    """/proc files report st_size 0 but have content: the cap must stop the read itself."""
    monkeypatch.setattr(localfiles, "FORBIDDEN_TREES", ())
    environ = Path("/proc/self/environ")
    assert os.stat(environ).st_size == 0
    with pytest.raises(BadInputError, match="too_large"):
        read_regular_file(environ, 4)


@pytest.fixture
def short_tmp():
    """A short directory (unix socket paths are limited to ~100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="fq") as name:
        yield Path(name)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["fifo", "socket", "directory"])
def test_non_regular_files_are_refused_without_blocking(tmp_path, short_tmp, kind):
    if kind == "fifo":
        path = tmp_path / "fifo.jpg"
        os.mkfifo(path)  # no writer: a blocking open or read would hang here
    elif kind == "socket":
        path = short_tmp / "sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.close()  # the socket file stays
    else:
        path = tmp_path / "dir.jpg"
        path.mkdir()
    started = time.monotonic()
    with pytest.raises(BadInputError) as info:
        read_regular_file(path, 1 << 20)
    assert info.value.code == "not_a_regular_file"
    assert time.monotonic() - started < 2


def test_a_character_device_is_refused_by_fstat_even_outside_dev(monkeypatch):
    """Without the /dev name rule, fstat still refuses /dev/zero (it would never end)."""
    monkeypatch.setattr(localfiles, "FORBIDDEN_TREES", ())
    with pytest.raises(BadInputError) as info:
        read_regular_file(Path("/dev/zero"), 1 << 20)
    assert info.value.code == "not_a_regular_file"
    assert "character device" in info.value.message


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "path",
    ["/dev/zero", "/dev/urandom", "/proc/self/environ", "/proc/self/mem", "/sys/kernel/notes", "/dev/../dev/zero"],
)
def test_kernel_and_device_trees_are_forbidden(path):
    with pytest.raises(BadInputError) as info:
        read_regular_file(Path(path), 1 << 20)
    assert info.value.code == "forbidden"


def test_a_directory_symlinked_into_proc_is_forbidden(tmp_path):
    (tmp_path / "p").symlink_to("/proc/self")
    with pytest.raises(BadInputError) as info:
        read_regular_file(tmp_path / "p" / "environ", 1 << 20)
    assert info.value.code == "forbidden"


@pytest.mark.parametrize("target", ["/etc/passwd", "inside.jpg", "/proc/self/environ", "/dev/zero"])
def test_a_final_symlink_is_never_followed(tmp_path, target):
    (tmp_path / "inside.jpg").write_bytes(b"jpeg")
    link = tmp_path / "link.jpg"
    link.symlink_to(target)
    with pytest.raises(BadInputError) as info:
        read_regular_file(link, 1 << 20)
    assert info.value.code in ("not_a_regular_file", "forbidden")


def test_a_missing_file_is_unreadable(tmp_path):
    with pytest.raises(BadInputError) as info:
        read_regular_file(tmp_path / "nope.jpg", 10)
    assert (info.value.code, info.value.message) == ("unreadable", "no such file")
    with pytest.raises(BadInputError, match="unreadable"):
        read_regular_file(tmp_path / "nope" / "deeper.jpg", 10)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_a_file_without_permission_is_unreadable(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"jpeg")
    path.chmod(0)
    with pytest.raises(BadInputError) as info:
        read_regular_file(path, 10)
    assert info.value.code == "unreadable"


def test_a_permission_error_is_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"jpeg")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(localfiles.os, "open", refuse)
    with pytest.raises(BadInputError) as info:
        read_regular_file(path, 10)
    assert (info.value.code, info.value.message) == ("unreadable", "permission denied")


def test_open_regular_file_may_follow_a_symlink_when_asked(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"a,b\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "m.csv")
    with open_regular_file(tmp_path / "link.csv", follow_symlinks=True) as fh:
        assert fh.read() == b"a,b\n"
