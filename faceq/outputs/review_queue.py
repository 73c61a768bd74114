"""The review queue: every flagged row into review.csv, and the bounded part of it report.html shows.

Streams parts one at a time (memory bounded whatever the job size); each row carries the
plain-language reason and action (``faceq.outputs.guidance``) and, for attendance, the claimed
employee's prior verdicts.
"""

from __future__ import annotations

import csv
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from faceq.job import spec as jobs
from faceq.job.spec import JobHeader
from faceq.outputs.csvsafe import inert_cell
from faceq.outputs.guidance import explain, section_of, section_order
from faceq.outputs.placeholder import ITEM_NOTE, is_placeholder
from faceq.outputs.results import field_columns, read_parquet
from faceq.storage.store import Storage

REPORT_ROWS = 120  # flagged rows listed in report.html, all sections together (review.csv lists all of them)
SECTION_ROWS = 20  # … at most this many per section (the section's count says how many there are)
ALERT_SAMPLES = 3  # rows shown per camera alert (the rest are counted under it)
EMPLOYEE_LIMIT = 50_000  # distinct flagged employees counted per employee
_VERIFICATION = ["decision", "similarity", "gallery", "best_candidate_id", "best_candidate_score"]
_TOP_K = ["top_k_ids", "top_k_scores"]
SOURCE_FOLDED_REASONS = {"low_quality", "likely_not_a_face"}  # explained by a source alert
TOP_LEVEL = "(top level)"


def iter_parts(storage: Storage, header: JobHeader, columns: list[str] | None) -> Iterator[pa.Table]:
    """The run's parts in chunk order, one at a time."""
    for index in range(header.n_chunks):
        yield read_parquet(storage.get_bytes(jobs.part_key(header.job_id, header.run_id, index)), columns)


def source_of(row: dict) -> str:
    """Where a photo came from: the manifest's device, else its top-level folder."""
    if row.get("device_id"):
        return row["device_id"]
    return row["item_id"].split("/", 1)[0] if "/" in row["item_id"] else TOP_LEVEL


def source_column(table: pa.Table) -> pa.Array:
    """``source_of`` for a whole table at once."""
    item_id = table.column("item_id").combine_chunks()
    folder = pc.list_element(pc.split_pattern(item_id, "/", max_splits=1), 0)
    folder = pc.if_else(pc.match_substring(item_id, "/"), folder, pa.scalar(TOP_LEVEL))
    if "device_id" not in table.column_names:
        return folder
    device = table.column("device_id").combine_chunks()
    has_device = pc.fill_null(pc.not_equal(device, ""), False)
    return pc.if_else(has_device, device, folder)


def folded_into_alert(row: dict, alerted: set[str]) -> bool:
    return source_of(row) in alerted and bool(row["review_reasons"]) and \
        set(row["review_reasons"]) <= SOURCE_FOLDED_REASONS


def review_columns(header: JobHeader) -> list[str]:
    columns = ["item_id", "source_uri", "status", "error", "quality", "needs_review", "review_reasons", "face_count",
               "face_index", "bbox", "landmarks", "model_id"]
    columns += [c for c in _VERIFICATION + _TOP_K if header.verifies] + _compare_columns(header)
    return columns + [c for c in field_columns(header.columns) if c not in columns]


class ReviewQueue:
    """What report.html shows of the flagged rows, bounded whatever the job size: per section
    (what a person has to do, faceq.outputs.guidance) its count and its first ``section_rows`` rows
    (``total_rows`` at most over all sections); per camera alert the rows folded into it and a
    few samples; per claimed employee the flags by section."""

    def __init__(self, decides: str | None, section_rows: int = SECTION_ROWS, total_rows: int = REPORT_ROWS):
        self.decides = decides
        self.section_rows, self.total_rows = section_rows, total_rows
        self.counts: Counter = Counter()
        self.rows: dict[str, list[dict]] = {}
        self.alert_counts: Counter = Counter()
        self.alert_samples: dict[str, list[dict]] = {}
        self.employees: dict[str, Counter] = {}
        self.employees_left_out = 0  # distinct employees beyond EMPLOYEE_LIMIT (counted, not itemised)
        self.n_listed = 0

    def add(self, row: dict, folded: bool) -> None:
        if folded:
            source = source_of(row)
            self.alert_counts[source] += 1
            samples = self.alert_samples.setdefault(source, [])
            if len(samples) < ALERT_SAMPLES:
                samples.append(row)
            return
        section = section_of(row, self.decides)
        self.counts[section] += 1
        rows = self.rows.setdefault(section, [])
        if len(rows) < self.section_rows and self.n_listed < self.total_rows:
            rows.append(row)
            self.n_listed += 1
        employee = row.get("employee_id")
        if self.decides == "attendance" and employee:
            if employee in self.employees or len(self.employees) < EMPLOYEE_LIMIT:
                self.employees.setdefault(employee, Counter())[section] += 1
            else:
                self.employees_left_out += 1

    def sections(self) -> list[tuple[str, int, list[dict]]]:
        """(section, flagged rows in it, the rows listed), most urgent first, empty ones left out."""
        order = list(section_order(self.decides))
        order += sorted(s for s in self.counts if s not in order)
        return [(s, self.counts[s], self.rows.get(s, [])) for s in order if self.counts[s]]

    def __iter__(self):  # the listed rows, section by section
        return (row for _, _, rows in self.sections() for row in rows)

    def __len__(self) -> int:
        return self.n_listed


def _compare_columns(header: JobHeader) -> list[str]:
    return ["decision", "similarity", "source_uri_b", "quality_b", "face_count_b", "bbox_b", "landmarks_b"] \
        if header.decides == "compare" else []


def _decision_cells(header: JobHeader) -> list[str]:
    """The review.csv columns of a job's decisions (attendance: against the gallery; compare: the pair)."""
    if header.decides == "compare":
        return ["decision", "similarity", "source_uri_b", "quality_b", "face_count_b"]
    return [c for c in _VERIFICATION if header.verifies and c != "gallery"]


def review_header(header: JobHeader) -> list[str]:
    verification = _decision_cells(header)
    return ["item_id", "source_uri", "status", "quality", "review_reasons", "error", *verification, "source",
            "source_alert", *field_columns(header.columns), "face_index", "face_count",
            *(_TOP_K + ["prior_verdicts"] if header.verifies else []), "section", "reason", "action", "placeholder"]


def write_review(storage: Storage, header: JobHeader, alerted: set[str], out: Path,
                 report_rows: int = REPORT_ROWS, thresholds: dict | None = None,
                 section_rows: int = SECTION_ROWS) -> tuple[int, ReviewQueue]:
    """Pass two: every flagged row into ``out`` (CSV, cells made inert for spreadsheets), with the
    plain-language reason and recommended action, the top-k candidates and, for attendance,
    the claimed employee's prior verdicts. Returns how many rows a camera alert explains, and
    the bounded review queue report.html shows (iterating it gives the rows it lists)."""
    from faceq.outputs.verdicts import PriorVerdicts

    verification = _decision_cells(header)
    extra = field_columns(header.columns)
    # earlier verdicts on the claimed employees: the gallery's verdict index (bounded: GALLERY_INDEX_ROWS)
    # (not for report-less jobs: a kiosk's one-image checks stay one read short)
    prior = PriorVerdicts(storage, header.gallery if header.verifies and header.report else None,
                          exclude_job=header.job_id)
    folded = 0
    queue = ReviewQueue(header.decides, section_rows=section_rows, total_rows=report_rows)
    with out.open("w", newline="", encoding="utf-8-sig") as fh:  # the BOM makes Excel read UTF-8
        writer = csv.writer(fh)
        writer.writerow(review_header(header))
        for table in iter_parts(storage, header, review_columns(header)):
            for row in table.filter(table.column("needs_review")).to_pylist():
                is_folded = folded_into_alert(row, alerted)
                folded += is_folded
                queue.add(row, is_folded)
                reason, action = explain(row, header.decides, thresholds)
                cells = [row["item_id"], row["source_uri"], row["status"], _fmt(row["quality"]),
                         ";".join(row["review_reasons"]), row["error"] or ""]
                cells += [_fmt(row[c]) for c in verification]
                cells += [source_of(row), "yes" if is_folded else ""] + [_fmt(row[c]) for c in extra]
                cells += [_fmt(row.get("face_index")), _fmt(row.get("face_count"))]
                if header.verifies:
                    cells += [";".join(row.get("top_k_ids") or []),
                              ";".join(f"{s:.4f}" for s in row.get("top_k_scores") or []),
                              " | ".join(prior.lines(row.get("employee_id")))]
                cells += [section_of(row, header.decides), reason, action,
                          ITEM_NOTE if is_placeholder(row.get("model_id")) else ""]
                writer.writerow([inert_cell(c) for c in cells])
    return folded, queue


def flagged_page(storage: Storage, header: JobHeader, alerted: set[str], section: str, start: int,
                 count: int) -> list[dict]:
    """Rows ``start`` … ``start + count`` of one review-queue section (in job order), streamed
    part by part: how the local review page pages through hundreds of flags."""
    found, seen = [], 0
    for table in iter_parts(storage, header, review_columns(header)):
        for row in table.filter(table.column("needs_review")).to_pylist():
            if folded_into_alert(row, alerted) or section_of(row, header.decides) != section:
                continue
            if seen >= start:
                found.append(row)
                if len(found) == count:
                    return found
            seen += 1
    return found


def _fmt(value) -> str | float | int:
    """A CSV cell: floats to 4 places, times in ISO-8601, ``extra`` as ``key=value; …``. Numbers
    stay numbers (a negative similarity is data, not a formula: faceq.outputs.csvsafe passes them)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "; ".join(f"{k}={v}" for k, v in value)
    return str(value)
