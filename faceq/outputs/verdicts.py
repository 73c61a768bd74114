"""Reviewers' verdicts on flagged items, stored with the job and indexed per gallery.

    jobs/<id>/verdicts.parquet            every verdict recorded on the job's items, oldest first
                                          (the newest per item is the item's verdict)
    galleries/<name>/verdicts.parquet     the same rows for attendance jobs of that gallery, so a
                                          later job's report shows an employee's prior verdicts
                                          (the newest GALLERY_INDEX_ROWS are kept)

A verdict is ``confirmed`` (the flag was checked: it is who it claims to be / the photo is
fine), ``rejected`` (it is not: impersonation, wrong person, unusable) or ``retake`` (ask for a
new photo), with a note, the reviewer and the time. Appending reads the object, adds the rows
and writes a new version in one atomic put; callers serialise appends with a lock (the client
uses the broker's, ``faceq:verdict-lock:<key>``). No torch, no Celery.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from faceq.job import spec as jobs
from faceq.errors import JobError
from faceq.outputs.results import open_parquet, read_parquet, to_parquet
from faceq.storage.store import Storage

VERDICTS = ("confirmed", "rejected", "retake")
VERDICT_TEXT = {
    "confirmed": "confirmed (it is the claimed employee / the photo is fine)",
    "rejected": "rejected (not the claimed employee, or unusable)",
    "retake": "retake requested",
}
GALLERY_INDEX_ROWS = 100_000
MAX_NOTE = 2000
MAX_REVIEWER = 128

SCHEMA = pa.schema([
    ("job_id", pa.string()),
    ("item_id", pa.string()),
    ("verdict", pa.string()),
    ("note", pa.string()),
    ("reviewer", pa.string()),
    ("recorded_at", pa.timestamp("ms", tz="UTC")),
    # what the item was when the verdict was given (copied from the job's results)
    ("employee_id", pa.string()),
    ("decision", pa.string()),
    ("review_reasons", pa.string()),
    ("captured_at", pa.string()),
    ("gallery", pa.string()),  # name@vN
])

Lock = Callable[[str], AbstractContextManager]


def job_verdicts_key(job_id: str) -> str:
    return f"{jobs.job_prefix(job_id)}verdicts.parquet"


def gallery_verdicts_key(gallery: str) -> str:
    return f"galleries/{gallery}/verdicts.parquet"


def read(storage: Storage, key: str) -> pa.Table:
    """Every verdict in ``key`` (an empty table when there is none yet)."""
    if not storage.exists(key):
        return SCHEMA.empty_table()
    table = read_parquet(storage.get_bytes(key))
    return table.select([f.name for f in SCHEMA if f.name in table.column_names])


def append(storage: Storage, key: str, rows: pa.Table, keep_last: int | None = None) -> None:
    """The verdicts in ``key`` plus ``rows``, written as a new object (one atomic put)."""
    table = pa.concat_tables([read(storage, key).cast(SCHEMA), rows.cast(SCHEMA)])
    if keep_last is not None and table.num_rows > keep_last:
        table = table.slice(table.num_rows - keep_last)
    storage.put_bytes(key, to_parquet(table))


def latest_per_item(table: pa.Table) -> dict[str, dict]:
    """item_id → the newest verdict on it."""
    latest: dict[str, dict] = {}
    for row in table.to_pylist():  # oldest first: later rows replace earlier ones
        latest[row["item_id"]] = row
    return latest


def find_item(storage: Storage, summary: dict, item_id: str) -> dict | None:
    """The result row of ``item_id`` in a finished job (the first face's, with --all-faces),
    reading one part at a time and only the columns a verdict copies."""
    wanted = ["item_id", "decision", "review_reasons", "gallery", "employee_id", "captured_at_raw", "captured_at"]
    for key in storage.list_keys(summary["outputs"]["results"]):
        with open_parquet(storage.get_bytes(key)) as parquet:
            names = set(parquet.schema_arrow.names)
            table = parquet.read(columns=[c for c in wanted if c in names], use_threads=False)
        match = table.filter(pc.equal(table.column("item_id"), item_id))
        if match.num_rows:
            return match.slice(0, 1).to_pylist()[0]
    return None


def _clean(value: str | None, limit: int, what: str) -> str:
    value = (value or "").strip()
    if len(value) > limit:
        raise JobError(f"the {what} is longer than {limit} characters")
    return "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in value)


def record(storage: Storage, job_id: str, item_id: str, verdict: str, note: str | None, reviewer: str,
           lock: Lock = lambda name: nullcontext(), now: datetime | None = None) -> dict:
    """Record a verdict on one item of a finished job; returns the stored row."""
    jobs.validate_job_id(job_id)
    if verdict not in VERDICTS:
        raise JobError(f"unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    reviewer = _clean(reviewer, MAX_REVIEWER, "reviewer name")
    if not reviewer:
        raise JobError("a verdict needs a reviewer (--reviewer, FACEQ_REVIEWER or the login name)")
    note = _clean(note, MAX_NOTE, "note")
    if not storage.exists(jobs.summary_key(job_id)):
        raise JobError(f"job {job_id} has no summary in {storage.url}: verdicts are recorded on finished jobs")
    summary = json.loads(storage.get_bytes(jobs.summary_key(job_id)))
    item = find_item(storage, summary, item_id)
    if item is None:
        raise JobError(f"job {job_id} has no item {item_id!r}")
    captured = item.get("captured_at_raw") or item.get("captured_at")
    row = {
        "job_id": job_id, "item_id": item_id, "verdict": verdict, "note": note, "reviewer": reviewer,
        "recorded_at": (now or datetime.now(timezone.utc)).replace(microsecond=0),
        "employee_id": item.get("employee_id"), "decision": item.get("decision"),
        "review_reasons": ";".join(item.get("review_reasons") or []),
        "captured_at": captured.isoformat() if isinstance(captured, datetime) else captured,
        "gallery": item.get("gallery"),
    }
    table = pa.Table.from_pylist([row], schema=SCHEMA)
    with lock(f"job:{job_id}"):
        append(storage, job_verdicts_key(job_id), table)
    gallery = (item.get("gallery") or "").split("@", 1)[0]
    if gallery and item.get("employee_id"):
        with lock(f"gallery:{gallery}"):
            append(storage, gallery_verdicts_key(gallery), table, keep_last=GALLERY_INDEX_ROWS)
    return row


class PriorVerdicts:
    """A gallery's verdict index without one job's own verdicts: an employee's newest
    ``per_employee`` verdicts on demand. Read on first use (a job with no flagged row never
    reads it); rows become Python objects only when asked for."""

    def __init__(self, storage: Storage, gallery: str | None, exclude_job: str | None = None,
                 per_employee: int = 3):
        self.storage, self.gallery, self.exclude_job, self.per_employee = storage, gallery, exclude_job, per_employee
        self._table: pa.Table | None = None
        self._positions: dict[str, list[int]] = {}

    def _load(self) -> pa.Table:
        if self._table is None:
            table = read(self.storage, gallery_verdicts_key(self.gallery)) if self.gallery else SCHEMA.empty_table()
            if self.exclude_job and table.num_rows:
                table = table.filter(pc.fill_null(pc.not_equal(table.column("job_id"), self.exclude_job), True))
            employees = table.column("employee_id").to_pylist()
            for position in range(len(employees) - 1, -1, -1):  # newest first
                rows = self._positions.setdefault(employees[position], [])
                if len(rows) < self.per_employee:
                    rows.append(position)
            self._table = table
        return self._table

    def rows(self, employee: str | None) -> list[dict]:
        if not self.gallery or not employee:
            return []
        table = self._load()
        return [table.slice(p, 1).to_pylist()[0] for p in self._positions.get(employee, [])]

    def lines(self, employee: str | None) -> list[str]:
        return [describe(row) for row in self.rows(employee)]


def prior_verdicts(storage: Storage, gallery: str, employee_ids, exclude_job: str | None = None,
                   per_employee: int = 3) -> dict[str, list[dict]]:
    """employee → their newest ``per_employee`` verdicts in the gallery's index (other jobs than
    ``exclude_job``), newest first."""
    wanted = sorted({e for e in employee_ids if e})
    if not gallery or not wanted:
        return {}
    index = PriorVerdicts(storage, gallery, exclude_job, per_employee)
    return {e: rows for e in wanted if (rows := index.rows(e))}


def describe(row: dict) -> str:
    """One line: ``2026-11-20 rejected by alice (job att-1): "not him"``."""
    when = row["recorded_at"]
    when = when.strftime("%Y-%m-%d") if isinstance(when, datetime) else str(when)[:10]
    text = f"{when} {row['verdict']} by {row['reviewer']} (job {row['job_id']})"
    return text + (f': "{row["note"]}"' if row.get("note") else "")
