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
    fd, _ = _open_regular(os.fspath(path), follow_symlinks)
    try:
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)  # type: ignore[return-value]
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: Path, max_bytes: int | None) -> bytes:
    """The bytes of the regular file ``path``; never more than ``max_bytes`` held in memory.

    The cap is enforced while reading (a file that grows, or lies about its size, is still
    stopped at ``max_bytes + 1``): more raises ``BadInputError("too_large")``.
    ``max_bytes=None`` reads the whole (regular) file. On the workers' per-item path: a few
    system calls and no Python-level path walking (see ``_open_regular``).
    """
    fd, size = _open_regular(os.fspath(path), follow_symlinks=False)
    try:
        if max_bytes is not None and size > max_bytes:
            raise BadInputError("too_large", f"more than {max_bytes} bytes")
        limit = (max_bytes + 1) if max_bytes is not None else None
        data = os.read(fd, min(size + 1, limit) if limit is not None else size + 1)
        if len(data) <= size and (limit is None or len(data) < limit):
            return data  # the whole file in one read: the usual case
        chunks, total = [data], len(data)
        while limit is None or total < limit:
            chunk = os.read(fd, _READ_CHUNK if limit is None else min(_READ_CHUNK, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if limit is not None and total >= limit:
            raise BadInputError("too_large", f"more than {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:  # EIO and friends, after a successful open
        raise BadInputError("unreadable", exc.strerror or "read failed") from None
    finally:
        os.close(fd)


def _open_regular(path: str, follow_symlinks: bool) -> tuple[int, int]:
    """A descriptor of the regular file ``path`` and its size, after the checks.

    The parent directory is opened first (``O_PATH``) and its real location read back from
    ``/proc/self/fd``: a symlinked parent into /proc, /sys or /dev is refused before the file
    itself is opened (opening some devices has effects), and the file is then opened relative
    to that very directory, so no later swap of a parent can redirect it. Without /proc (or
    ``O_PATH``) the real path is worked out with ``os.path.realpath`` instead.
    """
    _refuse_kernel_trees_by_name(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    parent, name = os.path.split(os.path.abspath(path))
    # a final symlink may point anywhere: then the whole real path is checked before opening
    dir_fd = _open_parent(parent) if name and _O_PATH and not follow_symlinks else None
    if dir_fd is None:
        _refuse_kernel_trees(path)
    try:
        try:
            fd = os.open(name if dir_fd is not None else path, flags, dir_fd=dir_fd)
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
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadInputError("not_a_regular_file", f"a {_kind(info.st_mode)}, not a regular file")
        return fd, info.st_size
    except BaseException:
        os.close(fd)
        raise


_O_PATH = getattr(os, "O_PATH", 0)


def _open_parent(parent: str) -> int | None:
    """An ``O_PATH`` descriptor of ``parent`` after checking its real location, or ``None``
    when /proc cannot tell it (the caller falls back to ``os.path.realpath``)."""
    try:
        dir_fd = os.open(parent, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadInputError("unreadable", "no such file") from None
    except PermissionError:
        raise BadInputError("unreadable", "permission denied") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
            raise BadInputError("unreadable", "no such file") from None
        raise BadInputError("unreadable", exc.strerror or "cannot open") from None
    try:
        real = os.readlink(f"/proc/self/fd/{dir_fd}")
    except OSError:
        os.close(dir_fd)
        return None
    if not real.startswith("/") or any(real == tree or real.startswith(tree + "/") for tree in FORBIDDEN_TREES):
        os.close(dir_fd)
        if real.startswith("/"):
            raise BadInputError("forbidden", "kernel and device files are never inputs")
        return None  # "(deleted)" or another oddity: let realpath decide
    return dir_fd


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


def _refuse_kernel_trees_by_name(path: str) -> None:
    absolute = os.path.abspath(path)
    if any(absolute == tree or absolute.startswith(tree + "/") for tree in FORBIDDEN_TREES):
        raise BadInputError("forbidden", "kernel and device files are never inputs")


def _refuse_kernel_trees(path: Path | str) -> None:
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
