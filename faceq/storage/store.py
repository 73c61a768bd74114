"""One storage interface for producer and workers: a local directory (``file://``) or S3.

A ``Storage`` is rooted at a URL (``file:///abs/dir`` or ``s3://bucket/prefix``) and addresses
objects by relative keys such as ``jobs/<id>/results/part-00000.parquet``. Input items are
addressed by absolute URIs (``file:///…`` or ``s3://bucket/key``) and read with ``read_uri``.
S3 goes through boto3 and honours ``FACEQ_S3_ENDPOINT_URL`` (MinIO, Ceph, …); credentials
come from the standard AWS environment/config chain, never from faceq's settings. Input
items on S3 (``read_uri``) are read with obstore where it is installed (a third of boto3's
CPU per GET; ``FACEQ_S3_READER=boto3`` turns it off), with boto3's credentials.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlparse

from faceq.errors import ConfigError, FaceqError, StorageError
from faceq.retry import retry_call


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → (``bucket``, ``some/key``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def file_uri_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):  # file://tmp/x: "tmp" is a host
        raise ConfigError(f"{uri!r} names the host {parsed.netloc!r}: a local path needs three slashes, "
                          f"file:///{parsed.netloc}{parsed.path}")
    if parsed.scheme != "file":
        raise ConfigError(f"not a local file:// URI: {uri!r}")
    return Path(unquote(parsed.path))


def read_local_uri(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a ``file://`` input (a regular file, at most ``max_bytes``), as ``read_uri`` reads it."""
    from faceq.storage.localfiles import read_regular_file

    if uri.startswith("file:///") and "?" not in uri and "#" not in uri:  # the canonical form: no parsing
        return read_regular_file(unquote(uri[7:]) if "%" in uri else uri[7:], max_bytes)
    return read_regular_file(file_uri_path(uri), max_bytes)


class Storage(ABC):
    """Objects under one root. Keys use ``/`` separators and never start with one."""

    url: str
    s3_endpoint_url: str | None = None

    retry_seconds: float = 0.0  # how long transient failures (S3, a full disk) are retried before a StorageError

    @cached_property
    def client(self):
        """One boto3 S3 client per Storage (boto3 clients are thread-safe). Timeouts bound
        every request: a stalled read fails and is retried instead of hanging a chunk."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32,
                        connect_timeout=5, read_timeout=30)
        return boto3.client("s3", endpoint_url=self.s3_endpoint_url, config=config)

    def _s3(self, call, what: str):
        """One S3 call, retried through outages for ``retry_seconds``; errors become StorageError."""
        try:
            return retry_call(call, what, self.retry_seconds, is_transient_s3_error)
        except FaceqError:
            raise
        except Exception as exc:  # botocore raises many unrelated types
            error = StorageError(f"{what}: {_describe(exc)}")
            error.transient = is_transient_s3_error(exc)
            raise error from exc

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write (or atomically overwrite) an object; returns its absolute URI."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read one of faceq's own objects."""

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> str:
        """Write a large local file as an object without holding it in memory."""
        return self.put_bytes(key, path.read_bytes(), content_type)

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, sorted."""

    @abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names of the immediate "folders" under ``prefix`` (which ends with ``/``), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Absolute URI of ``key``, readable with ``read_uri``."""

    def read_uri(self, uri: str, max_bytes: int | None = None) -> bytes:
        """Read an input item by absolute ``file://`` or ``s3://`` URI, at most ``max_bytes``.

        Callers check the URI against the job's allowed sources first (faceq.storage.allow). Local
        reads refuse anything but regular files and stop at the cap while reading.
        """
        if uri.startswith("s3://"):
            bucket, key = split_s3_uri(uri)
            fast = self._object_store(bucket)
            if fast is not None:
                return self._read_obstore(fast, key, max_bytes, f"cannot read {uri}")
            return self._s3(lambda: _read_body(self.client.get_object(Bucket=bucket, Key=key)["Body"], max_bytes),
                            f"cannot read {uri}")
        return read_local_uri(uri, max_bytes)

    def _object_store(self, bucket: str):
        """obstore's S3 client for ``bucket`` (Rust ``object_store``), made on first use, or None
        when obstore is not installed or ``FACEQ_S3_READER=boto3``: then boto3 reads.

        Input items only: one GET per item is the hot path of an S3 job, and there obstore
        costs a third of boto3's CPU (measured: 0.46 vs 1.36 ms per 6 KB GET against moto) and
        waits with the GIL released. Credentials come from boto3's own chain (environment,
        config files, instance roles…), so both clients see the same identity.
        """
        stores = self.__dict__.setdefault("_obstores", {})
        if bucket in stores:
            return stores[bucket]
        store = None
        if os.environ.get("FACEQ_S3_READER", "obstore") != "boto3":
            store = _make_object_store(bucket, self.s3_endpoint_url)
        stores[bucket] = store
        return store

    def _read_obstore(self, store, key: str, max_bytes: int | None, what: str) -> bytes:
        import obstore

        def read() -> bytes:
            result = obstore.get(store, key)
            if max_bytes is not None and result.meta["size"] > max_bytes:
                from faceq.errors import BadInputError

                raise BadInputError("too_large", f"more than {max_bytes} bytes (FACEQ_MAX_IMAGE_BYTES)")
            data = bytes(result.bytes())
            if max_bytes is not None and len(data) > max_bytes:  # a size header that lied
                from faceq.errors import BadInputError

                raise BadInputError("too_large", f"more than {max_bytes} bytes (FACEQ_MAX_IMAGE_BYTES)")
            return data

        try:
            return retry_call(read, what, self.retry_seconds, _is_transient_obstore_error)
        except FaceqError:
            raise
        except Exception as exc:
            error = StorageError(f"{what}: {_describe_obstore(exc)}")
            error.transient = _is_transient_obstore_error(exc)
            raise error from exc

    @property
    def is_local(self) -> bool:
        return False


def _make_object_store(bucket: str, endpoint_url: str | None):
    try:
        import boto3
        from obstore.store import S3Store
    except ImportError:
        return None
    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        return None  # anonymous access is boto3's business (it says why a request fails)

    def provide():
        frozen = credentials.get_frozen_credentials()
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key, "token": frozen.token,
                "expires_at": datetime.now(timezone.utc) + timedelta(minutes=5)}

    options = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=30)}
    config = {"region": session.region_name or "us-east-1"}
    if endpoint_url:
        config["endpoint"] = endpoint_url
        options["allow_http"] = endpoint_url.startswith("http://")
        config["virtual_hosted_style_request"] = False  # MinIO, Ceph, moto: path-style, as boto3 uses there
    # a few quick retries inside a request; outages are ridden out by ``retry_seconds`` around it
    retry = {"max_retries": 2, "retry_timeout": timedelta(seconds=10),
             "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2)}}
    try:
        return S3Store(bucket, config=config, client_options=options, retry_config=retry, credential_provider=provide)
    except Exception as exc:  # a configuration obstore does not understand: boto3 reads
        import logging

        logging.getLogger(__name__).warning("obstore cannot reach s3://%s (%s); reading with boto3", bucket, exc)
        return None


def _is_transient_obstore_error(exc: BaseException) -> bool:
    """Connection failures, timeouts and 5xx (obstore's ``GenericError`` after its own retries)
    are worth retrying; a missing key, a refused permission or a bad path is not."""
    try:
        from obstore import exceptions as ox
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, (ox.NotFoundError, ox.PermissionDeniedError, ox.UnauthenticatedError, ox.InvalidPathError,
                        ox.NotSupportedError, ox.UnknownConfigurationKeyError, FileNotFoundError, PermissionError)):
        return False
    return isinstance(exc, (ox.BaseError, ConnectionError, TimeoutError))


def _describe_obstore(exc: BaseException) -> str:
    from obstore import exceptions as ox

    if isinstance(exc, (ox.NotFoundError, FileNotFoundError)):
        return "NoSuchKey: the object does not exist"
    if isinstance(exc, (ox.PermissionDeniedError, ox.UnauthenticatedError, PermissionError)):
        return "AccessDenied: " + str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: " + str(exc).split("\n", 1)[0][:300]


class FileStorage(Storage):
    """A directory on local disk (or a shared mount). Writes are atomic (temp file + rename)."""

    def __init__(self, root: Path, s3_endpoint_url: str | None = None):
        self.root = root.resolve()
        self.url = self.root.as_uri()
        self.s3_endpoint_url = s3_endpoint_url

    @property
    def is_local(self) -> bool:
        return True

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise StorageError(f"key {key!r} escapes the storage root {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        return self._write(self._path(key), lambda fh: fh.write(data))

    def _write(self, path: Path, write: Callable) -> str:
        """Atomic (a temp file renamed over ``path``), retried like S3's writes while the error is
        one that clears (a full disk, a quota, a stale NFS handle), and never leaves the temp file."""
        def attempt() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the readers of a shared store
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

        try:
            retry_call(attempt, f"writing {path}", self.retry_seconds, is_transient_os_error)
        except OSError as exc:
            error = StorageError(f"cannot write {path}: {exc}")
            error.transient = is_transient_os_error(exc)
            raise error from exc
        return path.as_uri()

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"no such object: {path}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> str:
        def copy(fh) -> None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, fh)

        return self._write(self._path(key), copy)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return iter([prefix])
        if not base.is_dir():
            return iter([])
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return iter(sorted(k for k in keys if not Path(k).name.startswith(".")))

    def list_children(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list_keys(prefix))
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        base = self._path(prefix) if prefix else None
        if base is not None and base != self.root and base.is_dir():
            shutil.rmtree(base, ignore_errors=True)  # the emptied folders too (and stray temp files)
        return len(keys)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()


class S3Storage(Storage):
    """A bucket (and optional key prefix) in S3 or any S3-compatible store."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.s3_endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self._s3(lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                                ContentType=content_type), f"cannot write {self.uri(key)}")
        return self.uri(key)

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> str:
        self._s3(lambda: self.client.upload_file(str(path), self.bucket, self._key(key),
                                                 ExtraArgs={"ContentType": content_type}),
                 f"cannot write {self.uri(key)}")
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        return self._s3(lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read(),
                        f"cannot read {self.uri(key)}")

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

        return self._s3(head, f"cannot check {self.uri(key)}")

    def list_keys(self, prefix: str) -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = self._s3(lambda: list(list_s3_keys(self.client, self.bucket, self._key(prefix))),
                        f"cannot list {self.uri(prefix)}")
        return (key[strip:] for key in keys)

    def list_children(self, prefix: str) -> list[str]:
        def common_prefixes() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix), Delimiter="/")
            return [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]

        found = self._s3(common_prefixes, f"cannot list {self.uri(prefix)}")
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found)

    def delete_prefix(self, prefix: str) -> int:
        keys = [self._key(k) for k in self.list_keys(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._s3(lambda: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}),
                     f"cannot delete under {self.uri(prefix)}")
        return len(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def list_s3_keys(client, bucket: str, prefix: str) -> Iterator[str]:
    """Every key under ``prefix`` (paginated; S3 returns keys in lexicographic order)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}


# OS errors of a local or mounted store that clear on their own: a full disk (often freed by
# a cleanup job), a quota, an NFS server away or its handle stale, an interrupted call.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.ESTALE,
                              errno.ETIMEDOUT, errno.EBUSY})


def is_transient_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def is_transient_s3_error(exc: BaseException) -> bool:
    """Connection failures, timeouts, throttling and 5xx: worth retrying. A missing key or a
    refused permission is not."""
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

    if isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error.get("Code") in _TRANSIENT_CODES or status >= 500
    return False


def _read_body(body, max_bytes: int | None) -> bytes:
    """An S3 body, refusing to hold more than ``max_bytes`` (checked while reading)."""
    from faceq.errors import BadInputError

    if max_bytes is None:
        return body.read()
    data = body.read(max_bytes + 1)
    body.close()
    if len(data) > max_bytes:
        raise BadInputError("too_large", f"more than {max_bytes} bytes (FACEQ_MAX_IMAGE_BYTES)")
    return data


def _describe(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": ")
    return f"{type(exc).__name__}: {exc}"


def canonical_storage_url(url: str) -> str:
    """One spelling per storage root (``s3://b/p/`` = ``s3://b/p``; local paths absolute), so that
    a producer can tell whether the workers write where it reads."""
    if url.startswith("s3://"):
        bucket, prefix = split_s3_uri(url)
        return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
    path = file_uri_path(url) if url.startswith("file://") else Path(url)
    return Path(os.path.normpath(path)).as_uri() if path.is_absolute() else url


def open_storage(url: str, s3_endpoint_url: str | None = None, retry_seconds: float = 0.0) -> Storage:
    """Storage for ``file:///abs/dir``, an absolute local path, or ``s3://bucket[/prefix]``."""
    if url.startswith("s3://"):
        bucket, prefix = split_s3_uri(url)
        storage: Storage = S3Storage(bucket, prefix, endpoint_url=s3_endpoint_url)
    elif url.startswith("file://"):
        storage = FileStorage(file_uri_path(url), s3_endpoint_url)
    elif ":" in url.split("/", 1)[0] or not Path(url).is_absolute():
        raise ConfigError(f"FACEQ_STORAGE_URL={url!r}: use file:///abs/path, an absolute path or s3://bucket/prefix")
    else:
        storage = FileStorage(Path(url), s3_endpoint_url)
    storage.retry_seconds = retry_seconds
    return storage
