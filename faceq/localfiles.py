"""Reading local input files without being tricked: regular files only, bounded, no final symlink.

``Path.read_bytes`` on an input would block forever on a FIFO, fill memory from
``/dev/zero``, or follow a planted symlink to ``/proc/self/environ``. Here the file is
opened non-blocking without following a final symlink, checked with ``fstat`` on the open
descriptor (so the check and the read concern the same file), and read only up to a cap.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from faceq.errors import BadInputError

FORBIDDEN_TREES = ("/proc", "/sys", "/dev")  # kernel and device files are never inputs
_READ_CHUNK = 1 << 20


def open_regular_file(path: Path, follow_symlinks: bool = False) -> BinaryIO:
    """An open binary file object for ``path``, refused unless it is a regular file.

    Raises ``BadInputError`` with code ``forbidden`` (under /proc, /sys or /dev),
    ``unreadable`` (missing, permission) or ``not_a_regular_file`` (FIFO, device, socket,
    directory, or a final symlink when ``follow_symlinks`` is false).
    """
    _refuse_kernel_trees(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BadInputError("unreadable", "no such file") from None
    except PermissionError:
        raise BadInputError("unreadable", "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInputError("not_a_regular_file", "a symbolic link (not followed)") from None
        if exc.errno == errno.ENXIO:  # a socket, or a device with no driver behind it
            raise BadInputError("not_a_regular_file", "a socket or device") from None
        if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
            raise BadInputError("unreadable", "no such file") from None
        raise BadInputError("unreadable", exc.strerror or "cannot open") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadInputError("not_a_regular_file", f"a {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)  # type: ignore[return-value]
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: Path, max_bytes: int | None) -> bytes:
    """The bytes of the regular file ``path``; never more than ``max_bytes`` held in memory.

    The cap is enforced while reading (a file that grows, or lies about its size, is still
    stopped at ``max_bytes + 1``): more raises ``BadInputError("too_large")``.
    ``max_bytes=None`` reads the whole (regular) file.
    """
    with open_regular_file(path, follow_symlinks=False) as fh:
        try:
            if max_bytes is None:
                return fh.read()
            if os.fstat(fh.fileno()).st_size > max_bytes:
                raise BadInputError("too_large", f"more than {max_bytes} bytes")
            return _read_capped(fh, max_bytes)
        except OSError as exc:  # EIO and friends, after a successful open
            raise BadInputError("unreadable", exc.strerror or "read failed") from None


def _read_capped(fh: BinaryIO, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    remaining = max_bytes + 1
    while remaining > 0:
        chunk = fh.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    if remaining <= 0:
        raise BadInputError("too_large", f"more than {max_bytes} bytes")
    return b"".join(chunks)


def _refuse_kernel_trees(path: Path) -> None:
    """/proc, /sys and /dev are refused by name and by real path (a symlinked parent too)."""
    candidates = {os.path.abspath(path), os.path.realpath(path)}
    for candidate in candidates:
        if any(candidate == tree or candidate.startswith(tree + "/") for tree in FORBIDDEN_TREES):
            raise BadInputError("forbidden", "kernel and device files are never inputs")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"
