"""One storage interface for producer and workers: a local directory (``file://``) or S3.

A ``Storage`` is rooted at a URL (``file:///abs/dir`` or ``s3://bucket/prefix``) and addresses
objects by relative keys such as ``jobs/<id>/results/part-00000.parquet``. Input items are
addressed by absolute URIs (``file:///…`` or ``s3://bucket/key``) and read with ``read_uri``.
S3 goes through boto3 and honours ``FACEQ_S3_ENDPOINT_URL`` (MinIO, Ceph, …); credentials
come from the standard AWS environment/config chain, never from faceq's settings.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from faceq.errors import ConfigError, StorageError


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → (``bucket``, ``some/key``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def file_uri_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ConfigError(f"not a local file:// URI: {uri!r}")
    return Path(unquote(parsed.path))


class Storage(ABC):
    """Objects under one root. Keys use ``/`` separators and never start with one."""

    url: str
    s3_endpoint_url: str | None = None

    @cached_property
    def client(self):
        """One boto3 S3 client per Storage (boto3 clients are thread-safe)."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
        return boto3.client("s3", endpoint_url=self.s3_endpoint_url, config=config)

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write (or atomically overwrite) an object; returns its absolute URI."""

    def get_bytes(self, key: str) -> bytes:
        return self.read_uri(self.uri(key))

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Absolute URI of ``key``, readable with ``read_uri``."""

    def read_uri(self, uri: str) -> bytes:
        """Read an absolute ``file://`` or ``s3://`` URI (input items may live outside the root)."""
        if uri.startswith("s3://"):
            bucket, key = split_s3_uri(uri)
            try:
                return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as exc:  # botocore raises many unrelated types
                raise StorageError(f"cannot read {uri}: {exc}") from exc
        path = file_uri_path(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"no such file: {path}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc

    @property
    def is_local(self) -> bool:
        return False


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
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc}") from exc
        return path.as_uri()

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

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list_keys(prefix))
        for key in keys:
            self._path(key).unlink(missing_ok=True)
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
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        except Exception as exc:  # botocore raises many unrelated types
            raise StorageError(f"cannot write {self.uri(key)}: {exc}") from exc
        return self.uri(key)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"cannot check {self.uri(key)}: {exc}") from exc

    def list_keys(self, prefix: str) -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return (key[strip:] for key in list_s3_keys(self.client, self.bucket, self._key(prefix)))

    def delete_prefix(self, prefix: str) -> int:
        keys = [self._key(k) for k in self.list_keys(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def list_s3_keys(client, bucket: str, prefix: str) -> Iterator[str]:
    """Every key under ``prefix`` (paginated; S3 returns keys in lexicographic order)."""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]
    except Exception as exc:
        raise StorageError(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc


def open_storage(url: str, s3_endpoint_url: str | None = None) -> Storage:
    """Storage for ``file:///abs/dir``, a plain local path, or ``s3://bucket[/prefix]``."""
    if url.startswith("s3://"):
        bucket, prefix = split_s3_uri(url)
        return S3Storage(bucket, prefix, endpoint_url=s3_endpoint_url)
    if url.startswith("file://"):
        return FileStorage(file_uri_path(url), s3_endpoint_url)
    if "://" in url:
        raise ConfigError(f"FACEQ_STORAGE_URL={url!r}: use file:///abs/path or s3://bucket/prefix")
    return FileStorage(Path(url), s3_endpoint_url)
