"""Which inputs a job may read: canonical URIs checked against an allow-list of roots.

A manifest line, a symlink or a forged message must not decide what faceq reads. Every
input value is first made canonical (``normalise_uri``: no ``..``, one spelling per
object, malformed values refused), then checked against the job's roots
(``AllowedSources.check``): ``FACEQ_ALLOWED_SOURCES`` plus the roots code adds (the storage
root, the job's own source). Local paths are compared by their real path, so a symlink
that leaves a root is refused. Refusals say nothing about whether the target exists.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import quote_from_bytes, unquote

from faceq.errors import BadInputError, ConfigError

ENV_NAME = "FACEQ_ALLOWED_SOURCES"
MAX_URI_CHARS = 4096
MAX_S3_KEY_BYTES = 1024  # S3's own limit
FORBIDDEN_MESSAGE = "outside the job's allowed sources"

_MAX_CACHED_DIRS = 4096
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def is_uri(value: str) -> bool:
    """Whether a manifest value is written as a URI (``x://…``, ``file:…``, ``s3:…``) rather than a path."""
    return _uri_scheme(value) is not None


def local_path(canonical_uri: str) -> Path:
    """The path of a canonical ``file://`` URI (from ``normalise_uri`` or ``check``)."""
    return Path(_file_uri_path(canonical_uri))


def path_to_uri(path: str) -> str:
    """``Path(path).as_uri()`` for an absolute, normalised path, without pathlib's cost per item."""
    return "file://" + quote_from_bytes(os.fsencode(path))


def split_s3_prefix(uri: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` → (bucket, prefix ending with ``/`` or empty), validated."""
    _check_text(uri)
    bucket, key = _split_s3(uri, allow_empty_key=True)
    prefix = key.strip("/")
    return bucket, prefix + "/" if prefix else ""


def is_under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it, by whole components (``/data2`` is not under ``/data``).
    Both are absolute, normalised paths."""
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


def normalise_uri(value: str, base_dir: Path | None = None) -> str:
    """The canonical ``file:///abs/path`` or ``s3://bucket/key`` for a manifest value.

    Plain paths are taken relative to ``base_dir`` (absolute ones as they are) and
    normalised lexically; symlinks are resolved later, by ``AllowedSources.check``.
    Raises ``BadInputError("bad_uri", reason)``; the reason never repeats the value.
    """
    _check_text(value)
    scheme = _uri_scheme(value)
    if scheme is None:
        return _path_uri(value, base_dir)
    if scheme == "file":
        return _path_uri(_file_uri_path(value), None)
    if scheme == "s3":
        bucket, key = _split_s3(value)
        if not key:
            raise BadInputError("bad_uri", "an s3:// URI needs a key after the bucket")
        return f"s3://{bucket}/{key}"
    shown = scheme if len(scheme) <= 16 else scheme[:16] + "…"
    raise BadInputError("bad_uri", f"unsupported scheme {shown!r}: use a path, file:/// or s3:// (lower case)")


@dataclass(frozen=True)
class _Root:
    """One root: a local directory (by real path) or an S3 bucket and key prefix."""

    uri: str
    path: str | None = None  # real path, no trailing slash (except "/")
    bucket: str | None = None
    prefix: str = ""  # "" or ending with "/"

    def contains(self, canonical: str, real_path: str | None) -> bool:
        if self.path is not None:
            return real_path is not None and is_under(real_path, self.path)
        if real_path is not None or not canonical.startswith(f"s3://{self.bucket}/"):
            return False
        key = canonical[len(f"s3://{self.bucket}/"):]
        return key.startswith(self.prefix) or key == self.prefix.rstrip("/")


@dataclass(frozen=True)
class AllowedSources:
    """A frozen allow-list of input roots (local directories and S3 prefixes)."""

    _roots: frozenset[_Root] = frozenset()
    # Real paths of the directories checked so far: one realpath walk per directory, not per
    # file (18 of the 26 µs a check cost). Lives as long as the instance: a worker builds one
    # per chunk and re-checks right before reading, so a symlink swapped later is still seen.
    _real_dirs: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def parse(cls, text: str, extra_roots: Iterable[str | Path] = ()) -> "AllowedSources":
        """Roots from a comma-separated string (``s3://photos/,file:///data/``) plus ``extra_roots``."""
        values = [part.strip() for part in text.split(",") if part.strip()]
        return cls(frozenset(_parse_root(v) for v in [*values, *extra_roots]))

    @classmethod
    def from_env(cls, extra_roots: Iterable[str | Path] = (), environ: Mapping[str, str] | None = None
                 ) -> "AllowedSources":
        """``FACEQ_ALLOWED_SOURCES`` plus the roots code adds (storage root, the job's source)."""
        env = os.environ if environ is None else environ
        return cls.parse(env.get(ENV_NAME, ""), extra_roots)

    def with_roots(self, *roots: str | Path) -> "AllowedSources":
        """A copy that also allows ``roots``."""
        return AllowedSources(self._roots | {_parse_root(r) for r in roots})

    @property
    def roots(self) -> tuple[str, ...]:
        """The roots as URIs, sorted (for messages and logs)."""
        return tuple(sorted(root.uri for root in self._roots))

    def check(self, uri: str, base_dir: Path | None = None) -> str:
        """The canonical URI of ``uri`` if it lies under a root, else ``BadInputError("forbidden")``.

        For local files the result is the URI of the real path (symlinks resolved): what
        was checked is what gets read. Malformed values raise ``bad_uri`` first.
        """
        canonical = normalise_uri(uri, base_dir)
        real_path = None
        if canonical.startswith("file://"):
            real_path = self._real_path(_file_uri_path(canonical))
            canonical = path_to_uri(real_path)
        if any(root.contains(canonical, real_path) for root in self._roots):
            return canonical
        raise BadInputError("forbidden", FORBIDDEN_MESSAGE)

    def _real_path(self, path: str) -> str:
        """``os.path.realpath(path)``, with the parent's real path cached."""
        parent, name = os.path.split(path)
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = os.path.realpath(parent)
            if len(self._real_dirs) < _MAX_CACHED_DIRS:
                self._real_dirs[parent] = real_parent
        if not name:
            return real_parent
        candidate = os.path.join(real_parent, name)
        try:
            if stat.S_ISLNK(os.lstat(candidate).st_mode):
                return os.path.realpath(candidate)
        except OSError:  # missing or unreadable: realpath would not resolve it either
            pass
        return candidate

    def allows(self, uri: str) -> bool:
        """``check`` as a yes/no answer (malformed URIs are not allowed)."""
        try:
            self.check(uri)
        except BadInputError:
            return False
        return True


def _check_text(value: str) -> None:
    if not isinstance(value, str):
        raise BadInputError("bad_uri", f"expected text, got {type(value).__name__}")
    if not value:
        raise BadInputError("bad_uri", "empty")
    if len(value) > MAX_URI_CHARS:
        raise BadInputError("bad_uri", f"longer than {MAX_URI_CHARS} characters")
    if _CONTROL.search(value):
        raise BadInputError("bad_uri", "contains a NUL or control character")


def _uri_scheme(value: str) -> str | None:
    """The scheme of ``value`` if it is written as a URI (``x://`` or a ``file:``/``s3:`` prefix)."""
    match = _SCHEME.match(value)
    if match is None:
        return None
    scheme = match.group(1)
    if value[match.end():].startswith("//") or scheme.lower() in ("file", "s3"):
        return scheme
    return None  # "photo:1.jpg" is a relative file name


def _file_uri_path(value: str) -> str:
    """The absolute path of ``file:///x`` or ``file://localhost/x`` (percent-decoded)."""
    if not value.startswith("file://"):
        raise BadInputError("bad_uri", "file URIs are written file:///absolute/path")
    rest = value[len("file://"):]
    host, slash, path = rest.partition("/")
    if host not in ("", "localhost"):
        raise BadInputError("bad_uri", "a file:// URI must name no host (or localhost)")
    if not slash:
        raise BadInputError("bad_uri", "a file:// URI needs an absolute path")
    if "?" in path or "#" in path:
        raise BadInputError("bad_uri", "'?' and '#' must be percent-encoded in a file:// URI")
    try:
        decoded = unquote("/" + path, errors="strict")
    except UnicodeDecodeError:
        raise BadInputError("bad_uri", "percent-encoded bytes are not UTF-8") from None
    if _CONTROL.search(decoded):
        raise BadInputError("bad_uri", "contains a NUL or control character")
    return decoded


def _path_uri(path: str, base_dir: Path | None) -> str:
    if not os.path.isabs(path):
        if base_dir is None:
            raise BadInputError("bad_uri", "a relative path needs a base directory")
        path = os.path.join(os.path.abspath(base_dir), path)
    clean = "/" + os.path.normpath(path).lstrip("/")  # normpath keeps a leading "//"
    return path_to_uri(clean)


def _split_s3(value: str, allow_empty_key: bool = False) -> tuple[str, str]:
    if not value.startswith("s3://"):
        raise BadInputError("bad_uri", "s3 URIs are written s3://bucket/key (lower-case scheme)")
    bucket, _, key = value[len("s3://"):].partition("/")
    if not bucket:
        raise BadInputError("bad_uri", "an s3:// URI needs a bucket name")
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
        raise BadInputError("bad_uri", "not a valid S3 bucket name")
    if "?" in key or "#" in key:
        raise BadInputError("bad_uri", "'?' and '#' are not allowed in s3:// keys")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise BadInputError("bad_uri", "'.' and '..' segments are not allowed in s3:// keys")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_S3_KEY_BYTES:
        raise BadInputError("bad_uri", f"an S3 key is at most {MAX_S3_KEY_BYTES} bytes")
    if not key and not allow_empty_key:
        raise BadInputError("bad_uri", "an s3:// URI needs a key after the bucket")
    return bucket, key


def _parse_root(value: str | Path) -> _Root:
    """A root from configuration or code: ``s3://bucket[/prefix]``, ``file:///dir`` or ``/dir``."""
    text = str(value).strip()
    try:
        _check_text(text)
        scheme = _uri_scheme(text)
        if scheme == "s3":
            bucket, prefix = split_s3_prefix(text)
            return _Root(f"s3://{bucket}/{prefix}", bucket=bucket, prefix=prefix)
        if scheme == "file":
            path = _file_uri_path(text)
        elif scheme is None and os.path.isabs(text):
            path = text
        else:
            raise BadInputError("bad_uri", "use s3://bucket/prefix, file:///abs/dir or an absolute path")
    except BadInputError as exc:
        shown = text if len(text) <= 80 else text[:80] + "…"
        raise ConfigError(f"allowed source {shown!r}: {exc.message}") from None
    real = os.path.realpath("/" + os.path.normpath(path).lstrip("/"))
    return _Root(path_to_uri(real), path=real)
