"""Turn what users point at (a directory, an ``s3://`` prefix, a CSV manifest) into items, streaming.

Sources are iterators, so the producer's memory does not grow with the job: directories
are walked one level at a time, S3 listings page by page, manifests row by row. They are
also the first trust boundary: an audit never follows a symlink out of its tree nor
lists FIFOs or devices, and every manifest ``image`` is made canonical and checked
against the job's allowed roots here, at planning time, with the manifest line in the
error. Local files reach workers that do not share the disk by ``stage_batch``, which
uploads them (regular files only, bounded) unless storage is ``file://``.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import logging
import os
import stat
import unicodedata
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from faceq.storage.allow import AllowedSources, is_under, is_uri, local_path, normalise_uri, split_s3_prefix
from faceq.errors import BadInputError, JobError, StorageError
from faceq.job.ids import LookAlikes, normalise_employee_id, shown
from faceq.job.spec import Item
from faceq.storage.localfiles import open_regular_file, read_regular_file
from faceq.redact import redact_text, redact_url
from faceq.storage.store import Storage
from faceq.producer.idset import SeenIds

log = logging.getLogger(__name__)

COMPARE_COLUMNS = ("pair_id", "image_a", "image_b")
ATTENDANCE_COLUMNS = ("record_id", "employee_id", "image", "device_id", "captured_at")
IDENTIFYING_COLUMNS = ("record_id", "employee_id", "image", *COMPARE_COLUMNS)  # never empty; others may be
ENROLMENT_COLUMNS = ("employee_id", "image")
MAX_FIELD_CHARS = 4096  # a manifest cell; also bounds ids and URIs
MAX_ROW_BYTES = 1 << 20  # one CSV record (all its physical lines); bounds memory on hostile input
DEFAULT_MAX_UPLOAD_BYTES = 64 << 20
_READ_BYTES = 1 << 16
_WRONG_DELIMITERS = (";", "\t", "|")


@dataclass(frozen=True)
class LocalFile:
    """A file on this machine (its real path) and the name it gets under a job's ``inputs/``."""

    path: Path
    upload_name: str


@dataclass(frozen=True)
class LocalItem:
    """An item with an image still on this machine: ``path`` (its real path), or, for a compare
    pair whose first image is remote (``remote_uri``) but not its second, none. ``local_fields``
    are fields naming local files too (a pair's ``image_b``); staging replaces them with URIs."""

    item_id: str
    path: Path | None
    upload_name: str
    fields: dict[str, str] = field(default_factory=dict)
    local_fields: dict[str, LocalFile] = field(default_factory=dict)
    remote_uri: str | None = None


class UniqueIds(Iterator):
    """The items of a source whose ids are unique: by construction (a directory walk, an S3
    listing) or checked on the way (a manifest, line by line). ``write_plan`` sees
    ``unique_ids`` and does not keep a second check of its own."""

    unique_ids = True

    def __init__(self, items: Iterator[LocalItem | Item]):
        self._items = items

    def __iter__(self) -> "UniqueIds":
        return self

    def __next__(self) -> LocalItem | Item:
        return next(self._items)


@dataclass
class ListingStats:
    """What a directory walk listed and what it deliberately left out."""

    files: int = 0
    skipped_links: int = 0  # symlinks leaving the tree, dangling, or to directories (not followed)
    skipped_special: int = 0  # FIFOs, sockets, devices


# ---------------------------------------------------------------------------- directories


def iter_directory(root: Path, stats: ListingStats | None = None) -> Iterator[LocalItem]:
    """Every regular, non-hidden file under ``root``, in sorted path order.

    Symlinked directories are not followed; a symlinked file is listed only if its real
    path is a regular file inside ``root`` (it is never opened otherwise). ``stats``, if
    given, counts what was skipped. Raises ``JobError`` now if ``root`` is not a
    directory, and at the end if it listed nothing.
    """
    if not root.is_dir():
        raise JobError(f"{root} is not a directory")
    return UniqueIds(_walk(root, os.path.realpath(root), stats if stats is not None else ListingStats()))


def _walk(root: Path, real_root: str, stats: ListingStats) -> Iterator[LocalItem]:
    stack: list[Iterator[tuple[str, str]]] = [iter(_entries(real_root))]
    prefixes = [""]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            prefixes.pop()
            continue
        name, kind = entry
        if name.startswith("."):
            continue
        rel = prefixes[-1] + name
        full = os.path.join(real_root, rel)
        if kind == "dir":
            stack.append(iter(_entries(full)))
            prefixes.append(rel + "/")
            continue
        if kind == "link":
            full = _link_inside(full, real_root)
            if full is None:
                stats.skipped_links += 1
                continue
        elif kind != "file":
            stats.skipped_special += 1
            continue
        stats.files += 1
        yield LocalItem(rel, Path(full), rel)
    if stats.skipped_links or stats.skipped_special:
        log.warning("%s: skipped %d symlink(s) leaving the tree or to directories and %d non-regular file(s)",
                    root, stats.skipped_links, stats.skipped_special)
    if stats.files == 0:
        raise JobError(f"{root} contains no files")


def _entries(directory: str) -> list[tuple[str, str]]:
    """One directory's entries as (name, kind), sorted by name; kinds from ``d_type`` (no stat)."""
    try:
        with os.scandir(directory) as it:
            entries = [(e.name, _entry_kind(e)) for e in it]
    except OSError as exc:
        raise JobError(f"cannot list {directory}: {exc.strerror}") from None
    entries.sort()
    return entries


def _entry_kind(entry: os.DirEntry) -> str:
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "special"


def _link_inside(link: str, real_root: str) -> str | None:
    """The real path of a symlinked file if it is a regular file inside the tree, else None."""
    target = os.path.realpath(link)
    if not is_under(target, real_root):
        return None
    try:
        mode = os.stat(target, follow_symlinks=False).st_mode
    except OSError:
        return None
    return target if stat.S_ISREG(mode) else None


# ---------------------------------------------------------------------------- S3 prefixes


def iter_s3_prefix(uri: str, s3_endpoint_url: str | None, client=None) -> Iterator[Item]:
    """Every object under ``s3://bucket/prefix/`` (on ``/`` boundaries), page by page.

    Keys ending with ``/`` (folder markers) are skipped. Raises ``JobError`` now for a
    malformed URI, and during iteration if listing fails or nothing was listed.
    """
    try:
        bucket, prefix = split_s3_prefix(uri)
    except BadInputError as exc:
        raise JobError(f"{_short(uri)}: {exc.message}") from None
    if client is None:
        from faceq.storage.store import S3Storage

        client = S3Storage(bucket, "", endpoint_url=s3_endpoint_url).client
    return UniqueIds(_list_s3(client, bucket, prefix))


def _list_s3(client, bucket: str, prefix: str) -> Iterator[Item]:
    where = f"s3://{bucket}/{prefix}"
    listed = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                listed += 1
                yield Item(key[len(prefix):], f"s3://{bucket}/{key}")
    except Exception as exc:  # botocore raises many unrelated types
        raise JobError(f"cannot list {where}: {_describe(exc)}") from None
    if listed == 0:
        raise JobError(f"{where} holds no objects")


# ---------------------------------------------------------------------------- manifests


def iter_attendance_manifest(path: Path | str, allowed: AllowedSources | None,
                             s3_endpoint_url: str | None = None) -> Iterator[LocalItem | Item]:
    """Rows ``record_id, employee_id, image, device_id, captured_at``; one item per record."""
    return iter_manifest(path, ATTENDANCE_COLUMNS, lambda row: row["record_id"], allowed,
                         s3_endpoint_url=s3_endpoint_url)


def iter_enrolment_manifest(path: Path | str, allowed: AllowedSources | None,
                            s3_endpoint_url: str | None = None) -> Iterator[LocalItem | Item]:
    """Rows ``employee_id, image``; an employee may have several images."""
    return iter_manifest(path, ENROLMENT_COLUMNS, lambda row: f"{row['employee_id']}/{row['image']}", allowed,
                         s3_endpoint_url=s3_endpoint_url, distinct_employees=True)


def iter_compare_manifest(path: Path | str, allowed: AllowedSources | None,
                          s3_endpoint_url: str | None = None) -> Iterator[LocalItem | Item]:
    """Rows ``pair_id, image_a, image_b`` (and any extra columns); one item per pair. The item's
    image is ``image_a``; ``image_b`` travels as a field holding its canonical URI. A local
    file gets one upload name whatever pairs it is in, so workers embed it once per chunk."""
    return iter_manifest(path, COMPARE_COLUMNS, lambda row: row["pair_id"], allowed, images=("image_a", "image_b"),
                         id_column="pair_id", s3_endpoint_url=s3_endpoint_url)


def iter_manifest(
    path: Path | str,
    required: tuple[str, ...],
    item_id_fn: Callable[[dict[str, str]], str],
    allowed: AllowedSources | None,
    *,
    non_empty: tuple[str, ...] | None = None,
    images: tuple[str, ...] = ("image",),
    id_column: str | None = None,
    s3_endpoint_url: str | None = None,
    distinct_employees: bool = False,
) -> Iterator[LocalItem | Item]:
    """A CSV manifest, row by row: ``image`` is a path (relative to the manifest) or a
    ``file://`` / ``s3://`` URI; every other column (extra ones too) reaches the output.
    With several ``images`` columns the first is the item's image and the others become
    fields holding canonical URIs; ``id_column`` (the item id itself) is not repeated as a field.

    ``path`` may be local or ``s3://bucket/key.csv``. Every image is made canonical and,
    when ``allowed`` is given, checked against it. Anything wrong with the file — not
    UTF-8, a wrong delimiter, missing columns, a row of the wrong width, an oversized or
    empty required field, a malformed or forbidden image, a repeated id, no rows — raises
    a one-line ``JobError`` that names ``path:line``. ``non_empty`` defaults to the
    identifying columns among ``required``. An ``employee_id`` is made NFC and refused when it
    holds an invisible or text-direction character (``faceq.job.ids``); ``distinct_employees``
    (enrolment) also refuses two ids that look alike, naming both lines.
    """
    source = _ManifestFile(path, s3_endpoint_url)
    must_fill = tuple(c for c in required if c in IDENTIFYING_COLUMNS) if non_empty is None else non_empty
    return UniqueIds(_manifest_items(source, required, must_fill, item_id_fn, allowed, images, id_column,
                                     LookAlikes() if distinct_employees else None))


def _manifest_items(source: "_ManifestFile", required: tuple[str, ...], non_empty: tuple[str, ...],
                    item_id_fn: Callable[[dict[str, str]], str], allowed: AllowedSources | None,
                    images: tuple[str, ...] = ("image",), id_column: str | None = None,
                    look_alikes: LookAlikes | None = None) -> Iterator[LocalItem | Item]:
    name = source.name
    rows = _records(source)
    header_line, header = _header(name, rows, required)
    seen = SeenIds()
    count = 0
    for line, cells in rows:
        if not cells:
            continue  # a blank line
        row = _row(name, line, header, cells)
        empty = [c for c in non_empty if not row.get(c)]
        if empty:
            raise JobError(f"{name}:{line}: empty {', '.join(empty)}")
        if "employee_id" in row:
            row["employee_id"] = _employee_id(name, line, row["employee_id"], look_alikes)
        item_id = item_id_fn(row)
        earlier = seen.add(item_id, line)
        if earlier is not None and _id_on_line(source, earlier, header, item_id_fn) == item_id:
            raise JobError(f"{name}:{line}: duplicate id {_short(item_id)} (first on line {earlier})")
        first, *others = images
        uri = _image_uri(name, line, first, row[first], source, allowed)
        fields = {c: row[c] for c in header if c != first and c != id_column}
        local_fields = {}
        for column in others:
            fields[column] = _image_uri(name, line, column, row[column], source, allowed)
            if not fields[column].startswith("s3://"):
                local_fields[column] = _shared_upload(local_path(fields[column]))
        count += 1
        if uri.startswith("s3://"):
            yield LocalItem(item_id, None, "", fields, local_fields, uri) if local_fields else Item(item_id, uri, fields)
        elif others:
            shared = _shared_upload(local_path(uri))
            yield LocalItem(item_id, shared.path, shared.upload_name, fields, local_fields)
        else:
            real = local_path(uri)
            yield LocalItem(item_id, real, f"{line:06d}/{real.name}", fields)
    if count == 0:
        raise JobError(f"{name} has a header (line {header_line}) but no rows")


def _header(name: str, rows: Iterator[tuple[int, list[str]]], required: tuple[str, ...]) -> tuple[int, list[str]]:
    for line, cells in rows:
        if not cells:
            continue
        header = [c.strip() for c in cells]
        if any(len(c) > MAX_FIELD_CHARS for c in header):
            raise JobError(f"{name}:{line}: a header cell longer than {MAX_FIELD_CHARS} characters")
        if len(header) == 1:
            wrong = next((d for d in _WRONG_DELIMITERS if d in header[0]), None)
            if wrong is not None:
                raise JobError(f"{name}:{line}: the header is one column containing {wrong!r}: "
                               f"use commas between columns ({', '.join(required)})")
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise JobError(f"{name}:{line}: repeated column(s) {', '.join(_short(c) for c in repeated)}")
        missing = [c for c in required if c not in header]
        if missing:
            raise JobError(f"{name}:{line}: missing column(s) {', '.join(missing)}; need {', '.join(required)}")
        return line, header
    raise JobError(f"{name} is empty: expected a header line ({', '.join(required)}) and rows")


def _employee_id(name: str, line: int, value: str, look_alikes: LookAlikes | None) -> str:
    """The NFC id, or a JobError: invisible or direction characters, or (enrolment) a look-alike."""
    try:
        value = normalise_employee_id(value)
    except BadInputError as exc:
        raise JobError(f"{name}:{line}: employee_id {exc.message}") from None
    earlier = look_alikes.add(value, line) if look_alikes is not None else None
    if earlier is not None:
        raise JobError(f"{name}:{line}: employee_id {shown(value)} looks like {shown(earlier[0])} (line "
                       f"{earlier[1]}): two employees a reviewer cannot tell apart; use distinct ids")
    return value


def _row(name: str, line: int, header: list[str], cells: list[str]) -> dict[str, str]:
    if len(cells) != len(header):
        raise JobError(f"{name}:{line}: {len(cells)} cell(s) but the header has {len(header)}")
    if any(len(c) > MAX_FIELD_CHARS for c in cells):
        raise JobError(f"{name}:{line}: a field longer than {MAX_FIELD_CHARS} characters")
    return {column: cell.strip() for column, cell in zip(header, cells)}


def _shared_upload(real: Path) -> LocalFile:
    """One upload name per local file (a hash of its real path): a photo in many pairs is one object."""
    digest = hashlib.blake2b(os.fsencode(real), digest_size=10).hexdigest()
    return LocalFile(real, f"files/{digest}/{real.name}")


def _image_uri(name: str, line: int, column: str, value: str, source: "_ManifestFile",
               allowed: AllowedSources | None) -> str:
    """The canonical URI of a row's image (real path for local files), refused with the line."""
    try:
        if source.s3_dir is not None and not is_uri(value) and not os.path.isabs(value):
            value = source.s3_dir + value  # relative to an s3:// manifest
        if allowed is not None:
            return allowed.check(value, source.local_dir)
        uri = normalise_uri(value, source.local_dir)
        return Path(os.path.realpath(local_path(uri))).as_uri() if uri.startswith("file://") else uri
    except BadInputError as exc:
        if exc.code == "forbidden":
            roots = ", ".join(allowed.roots) if allowed is not None and allowed.roots else "none configured"
            raise JobError(f"{name}:{line}: {column} is outside the job's allowed sources ({roots}; "
                           f"see FACEQ_ALLOWED_SOURCES)") from None
        raise JobError(f"{name}:{line}: {column}: {exc.message}") from None


def _id_on_line(source: "_ManifestFile", line: int, header: list[str],
                item_id_fn: Callable[[dict[str, str]], str]) -> str | None:
    """Re-read the id of the record starting on ``line`` (confirms a hash hit is a real repeat)."""
    for record_line, cells in _records(source):
        if record_line == line:
            row = {c: v.strip() for c, v in zip(header, cells)}
            if "employee_id" in row:  # as the first pass made it
                row["employee_id"] = unicodedata.normalize("NFC", row["employee_id"])
            return item_id_fn(row)
        if record_line > line:
            break
    return None


class _ManifestFile:
    """A manifest to read (possibly twice): a local regular file or an ``s3://`` object."""

    def __init__(self, path: Path | str, s3_endpoint_url: str | None):
        text = str(path)
        self.s3_endpoint_url = s3_endpoint_url
        self.s3: tuple[str, str] | None = None
        self.s3_dir: str | None = None
        self.local_dir: Path | None = None
        if text.startswith("s3://"):
            try:
                bucket, key = split_s3_prefix(text)
            except BadInputError as exc:
                raise JobError(f"{_short(text)}: {exc.message}") from None
            key = key.rstrip("/")
            if not key:
                raise JobError(f"{_short(text)}: name the manifest object, not a bucket")
            self.s3 = (bucket, key)
            parent = key.rpartition("/")[0]
            self.s3_dir = f"s3://{bucket}/{parent}/" if parent else f"s3://{bucket}/"
            self.name = f"s3://{bucket}/{key}"
        else:
            self.path = Path(path)
            self.local_dir = self.path.absolute().parent
            self.name = str(path)

    def chunks(self) -> Iterator[bytes]:
        if self.s3 is not None:
            yield from self._s3_chunks()
            return
        try:
            fh = open_regular_file(self.path, follow_symlinks=True)
        except BadInputError as exc:
            raise JobError(f"cannot read manifest {self.name}: {exc.message}") from None
        with fh:
            try:
                yield from iter(lambda: fh.read(_READ_BYTES), b"")
            except OSError as exc:
                raise JobError(f"cannot read manifest {self.name}: {exc.strerror}") from None

    def _s3_chunks(self) -> Iterator[bytes]:
        from faceq.storage.store import S3Storage

        bucket, key = self.s3  # type: ignore[misc]
        try:
            body = S3Storage(bucket, "", endpoint_url=self.s3_endpoint_url).client.get_object(
                Bucket=bucket, Key=key)["Body"]
            try:
                yield from body.iter_chunks(_READ_BYTES)
            finally:
                body.close()
        except JobError:
            raise
        except Exception as exc:  # botocore raises many unrelated types
            raise JobError(f"cannot read manifest {self.name}: {_describe(exc)}") from None


def _records(source: _ManifestFile) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, cells) for each CSV record; bounded memory per record."""
    lines = _Lines(source.name, source.chunks())
    reader = csv.reader(lines, strict=True)
    while True:
        start = lines.line + 1
        lines.start_record(start)
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "field limit" in str(exc):
                raise JobError(f"{source.name}:{start}: a field longer than {MAX_FIELD_CHARS} characters") from None
            raise JobError(f"{source.name}:{reader.line_num}: malformed CSV ({exc})") from None
        yield start, cells


class _Lines:
    """Decoded text lines (ends kept) from byte chunks, numbered, each checked to be UTF-8,
    and refused once one record spans more than ``MAX_ROW_BYTES``."""

    def __init__(self, name: str, chunks: Iterable[bytes]):
        self.name = name
        self.line = 0
        self.record_line = 1
        self.record_bytes = 0
        self._raw = self._split(iter(chunks))

    def start_record(self, line: int) -> None:
        self.record_line, self.record_bytes = line, 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        raw = next(self._raw)
        self.line += 1
        self.record_bytes += len(raw)
        if self.record_bytes > MAX_ROW_BYTES:
            raise JobError(f"{self.name}:{self.record_line}: a record longer than {MAX_ROW_BYTES} bytes "
                           f"(a field is at most {MAX_FIELD_CHARS} characters)")
        if self.line == 1:
            if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise JobError(f"{self.name}:1: the manifest is UTF-16; save it as UTF-8")
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JobError(f"{self.name}:{self.line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                           f"{exc.start + 1} of the line); save the manifest as UTF-8") from None

    def _split(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        pending = b""
        for chunk in chunks:
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", start)) != -1:
                yield pending[start:end + 1]
                start = end + 1
            pending = pending[start:]
            if len(pending) > MAX_ROW_BYTES:
                raise JobError(f"{self.name}:{self.line + 1}: a line longer than {MAX_ROW_BYTES} bytes "
                               f"(a field is at most {MAX_FIELD_CHARS} characters)")
        if pending:
            yield pending


# ---------------------------------------------------------------------------- staging


def stage_batch(items: list[LocalItem | Item], storage: Storage, inputs_prefix: str, pool: Executor,
                max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> list[Item]:
    """Give one batch of items URIs the workers can read, in order.

    With ``file://`` storage a local file keeps its (real-path) ``file://`` URI. With
    remote storage it is uploaded under ``inputs_prefix`` (``jobs/<id>/runs/<run>/inputs/``)
    — but only a regular file read through ``read_regular_file`` (no symlink followed,
    nothing under /proc, /sys or /dev, at most ``max_bytes``): anything else stays a
    ``file://`` reference that the worker turns into that item's error row.
    """
    if storage.is_local:
        return [_staged(item, lambda file: file.path.as_uri()) for item in items]
    files = {f.upload_name: f for item in items if isinstance(item, LocalItem) for f in _local_files(item)}

    def upload(file: LocalFile) -> str:
        try:
            data = read_regular_file(file.path, max_bytes)
        except BadInputError:
            return file.path.as_uri()
        return storage.put_bytes(inputs_prefix + file.upload_name, data)

    try:
        uris = dict(zip(files, pool.map(upload, files.values())))  # a photo in several pairs: once
    except StorageError as exc:
        raise JobError(f"cannot upload inputs to {redact_url(storage.url)}: {redact_text(str(exc))}") from exc
    return [_staged(item, lambda file: uris[file.upload_name]) for item in items]


def _local_files(item: LocalItem) -> list[LocalFile]:
    own = [] if item.path is None else [LocalFile(item.path, item.upload_name)]
    return own + list(item.local_fields.values())


def _staged(item: LocalItem | Item, uri_of: Callable[[LocalFile], str]) -> Item:
    if isinstance(item, Item):
        return item
    uri = item.remote_uri if item.path is None else uri_of(LocalFile(item.path, item.upload_name))
    fields = item.fields | {name: uri_of(file) for name, file in item.local_fields.items()}
    return Item(item.item_id, uri, fields)


# ---------------------------------------------------------------------------- helpers


def _short(value: str, limit: int = 80) -> str:
    """``repr`` of a value from a manifest, cut so that a hostile one cannot flood a message."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": ")
    return redact_text(f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- compatibility


def list_directory(root: Path) -> list[LocalItem]:
    """Deprecated: ``list(iter_directory(root))`` (holds every item; use the iterator)."""
    return list(iter_directory(root))


def list_s3_prefix(uri: str, s3_endpoint_url: str | None) -> list[Item]:
    """Deprecated: ``list(iter_s3_prefix(...))``."""
    return list(iter_s3_prefix(uri, s3_endpoint_url))


def read_attendance_manifest(path: Path, allowed: AllowedSources | None = None) -> list[LocalItem | Item]:
    """Deprecated: ``list(iter_attendance_manifest(...))``."""
    return list(iter_attendance_manifest(path, allowed))


def read_enrolment_manifest(path: Path, allowed: AllowedSources | None = None) -> list[LocalItem | Item]:
    """Deprecated: ``list(iter_enrolment_manifest(...))``."""
    return list(iter_enrolment_manifest(path, allowed))
