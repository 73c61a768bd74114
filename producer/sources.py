"""Turn what users point at (a directory, an ``s3://`` prefix, an attendance CSV) into items.

Local files must reach workers that do not share the disk: unless storage is ``file://``
(same machine or a shared mount), they are uploaded under ``jobs/<id>/inputs/`` first.
"""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from faceq import jobs
from faceq.errors import JobError, StorageError
from faceq.jobs import Item
from faceq.storage import S3Storage, Storage, split_s3_uri

ATTENDANCE_COLUMNS = ("record_id", "employee_id", "image", "device_id", "captured_at")
IDENTIFYING_COLUMNS = ("record_id", "employee_id", "image")  # must not be empty; the others may be
ENROLMENT_COLUMNS = ("employee_id", "image")


@dataclass(frozen=True)
class LocalItem:
    """An item whose image is still a file on this machine."""

    item_id: str
    path: Path
    upload_name: str
    fields: dict[str, str] = field(default_factory=dict)


def list_directory(root: Path) -> list[LocalItem]:
    """Every regular, non-hidden file under ``root`` (non-images become error rows, not gaps)."""
    if not root.is_dir():
        raise JobError(f"{root} is not a directory")
    paths = sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    items = [LocalItem(p.relative_to(root).as_posix(), p, p.relative_to(root).as_posix()) for p in paths]
    if not items:
        raise JobError(f"{root} contains no files")
    return items


def list_s3_prefix(uri: str, s3_endpoint_url: str | None) -> list[Item]:
    bucket, prefix = split_s3_uri(uri)
    source = S3Storage(bucket, prefix, endpoint_url=s3_endpoint_url)
    items = [Item(key, source.uri(key)) for key in source.list_keys("") if not key.endswith("/")]
    if not items:
        raise JobError(f"{uri} holds no objects")
    return items


def read_attendance_manifest(path: Path) -> list[LocalItem | Item]:
    """Rows ``record_id, employee_id, image, device_id, captured_at``; one item per record."""
    return read_manifest(path, ATTENDANCE_COLUMNS, lambda row: row["record_id"])


def read_enrolment_manifest(path: Path) -> list[LocalItem | Item]:
    """Rows ``employee_id, image``; an employee may have several images."""
    return read_manifest(path, ENROLMENT_COLUMNS, lambda row: f"{row['employee_id']}/{row['image']}")


def read_manifest(path: Path, required: tuple[str, ...], item_id) -> list[LocalItem | Item]:
    """A CSV manifest: ``image`` is a path (relative to the manifest) or an ``s3://`` /
    ``file://`` URI; every other column reaches the output. ``item_id(row)`` names each row."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in header]
            if missing:
                raise JobError(f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(required)}")
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except OSError as exc:
        raise JobError(f"cannot read {path}: {exc}") from exc
    if not rows:
        raise JobError(f"{path} has no rows")
    seen: set[str] = set()
    items: list[LocalItem | Item] = []
    for line, row in enumerate(rows, start=2):
        record_id = item_id(row)
        if not all(row.get(c) for c in required if c in IDENTIFYING_COLUMNS) or record_id in seen:
            raise JobError(f"{path}:{line}: row {record_id!r} has an empty required column or is repeated")
        seen.add(record_id)
        fields = {c: row.get(c, "") for c in header if c != "image"}
        image = row["image"]
        if "://" in image:
            items.append(Item(record_id, image, fields))
        else:
            local = (path.parent / image).resolve()
            items.append(LocalItem(record_id, local, f"{line:06d}/{local.name}", fields))
    return items


def stage(items: list[LocalItem | Item], storage: Storage, job_id: str, progress: bool = True) -> list[Item]:
    """Give every local item a URI the workers can read, uploading when storage is remote."""
    if storage.is_local:
        return [i if isinstance(i, Item) else Item(i.item_id, i.path.resolve().as_uri(), i.fields) for i in items]

    def upload(item: LocalItem | Item) -> Item:
        if isinstance(item, Item):
            return item
        try:
            data = item.path.read_bytes()
        except OSError:
            # Keep the item: the worker turns the unreadable reference into an error row.
            return Item(item.item_id, item.path.resolve().as_uri(), item.fields)
        uri = storage.put_bytes(jobs.inputs_prefix(job_id) + item.upload_name, data)
        return Item(item.item_id, uri, item.fields)

    with ThreadPoolExecutor(16) as pool:
        try:
            return list(tqdm(pool.map(upload, items), total=len(items), desc="upload", unit="img", disable=not progress))
        except StorageError as exc:
            raise JobError(f"cannot upload inputs to {storage.url}: {exc}") from exc
