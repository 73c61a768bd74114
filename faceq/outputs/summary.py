"""Finalize a run: stream its parts into review.csv, report.html and summary.json.

Memory is bounded whatever the job size: parts are read one at a time with only the columns
each pass needs, counted with pyarrow compute, and flagged rows are streamed to a temporary
file that becomes review.csv. What grows with the job is 4 bytes per scored face (the quality
values the medians are taken over, kept once, per source) and 8 bytes per chunk. Two passes:
the first counts and finds the camera alerts, the second writes the review list, which needs
those alerts.

Runs once per run (the ledger's finalize lease) and is idempotent: the same parts give the
same files. The summary is written last and is the commit point: it names the run whose
results are the job's results, and only then are superseded runs deleted.
"""

from __future__ import annotations

import csv
import json
import tempfile
from array import array
from collections import Counter
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faceq.job import spec as jobs
from faceq.outputs.csvsafe import inert_cell
from faceq.gallery import EnrolmentBuilder, GalleryStore
from faceq.outputs.guidance import explain, section_of, section_order
from faceq.job.spec import JobHeader
from faceq.outputs.placeholder import ITEM_NOTE, is_placeholder
from faceq.outputs.results import field_columns, part_stats, read_parquet
from faceq.settings import TrustThresholds
from faceq.storage.store import Storage

HISTOGRAM_EDGES = [round(0.1 * i, 1) for i in range(11)]
REPORT_ROWS = 120  # flagged rows listed in report.html, all sections together (review.csv lists all of them)
SECTION_ROWS = 20  # … at most this many per section (the section's count says how many there are)
ALERT_SAMPLES = 3  # rows shown per camera alert (the rest are counted under it)
EMPLOYEE_LIMIT = 50_000  # distinct flagged employees counted per employee
_VERIFICATION = ["decision", "similarity", "gallery", "best_candidate_id", "best_candidate_score"]
_TOP_K = ["top_k_ids", "top_k_scores"]
SOURCE_FOLDED_REASONS = {"low_quality", "likely_not_a_face"}  # explained by a source alert
TOP_LEVEL = "(top level)"
_BLOCK = 1 << 13  # values clipped and binned at a time by quality_histogram


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


def quality_histogram(quality: np.ndarray) -> dict:
    """Counts per 0.1 bin over [0, 1]; scores ≥ 1 (possible with exp(logvar)) in the last bin."""
    counts = np.zeros(len(HISTOGRAM_EDGES) - 1, dtype=np.int64)
    for start in range(0, quality.size, _BLOCK):  # clipped a block at a time: no copy of the whole job
        counts += np.histogram(np.clip(quality[start:start + _BLOCK], 0.0, 1.0), bins=HISTOGRAM_EDGES)[0]
    return {"edges": HISTOGRAM_EDGES, "counts": counts.tolist()}


def _median(values: np.ndarray) -> float:
    """``np.median`` of an array this module owns, partitioned in place (no copy)."""
    return float(np.median(values, overwrite_input=True))


class SourceStats:
    """Rows, ok rows, flagged rows and quality values per source, accumulated part by part."""

    def __init__(self):
        self._counts: dict[str, list[int]] = {}
        self._quality: dict[str, list[np.ndarray]] = {}

    def add(self, table: pa.Table) -> None:
        sources = source_column(table)
        ok = pc.equal(table.column("status"), "ok")
        for source in pc.unique(sources).to_pylist():
            mask = pc.equal(sources, source)
            counts = self._counts.setdefault(source, [0, 0, 0])
            counts[0] += pc.sum(mask.cast(pa.int64())).as_py() or 0
            counts[1] += pc.sum(pc.and_(mask, ok).cast(pa.int64())).as_py() or 0
            counts[2] += pc.sum(pc.and_(mask, table.column("needs_review")).cast(pa.int64())).as_py() or 0
            quality = pc.drop_null(table.column("quality").filter(mask)).to_numpy()
            self._quality.setdefault(source, []).append(quality.astype(np.float32))

    def quality(self, source: str) -> np.ndarray:
        """The source's quality values as one array (its parts are merged once, then dropped)."""
        parts = self._quality[source]
        if len(parts) != 1:
            parts[:] = [np.concatenate(parts) if parts else np.zeros(0, np.float32)]
        return parts[0]

    def all_quality(self) -> np.ndarray:
        """Every source's quality values in one new array (the job's own statistics)."""
        sources = sorted(self._quality)
        return np.concatenate([self.quality(s) for s in sources]) if sources else np.zeros(0, np.float32)

    def result(self) -> dict[str, dict]:
        stats = {}
        for source in sorted(self._counts):
            quality = self.quality(source)  # a median reorders it in place: the values stay the same
            n_rows, n_ok, n_flagged = self._counts[source]
            stats[source] = {"n_rows": n_rows, "n_ok": n_ok, "n_flagged": n_flagged,
                             "median_quality": round(_median(quality), 4) if quality.size else None}
        return stats


def source_stats(rows: list[dict]) -> dict[str, dict]:
    """Per-source statistics of rows given as dicts (item_id, status, quality, needs_review[, device_id])."""
    accumulator = SourceStats()
    if rows:
        columns = ["item_id", "status", "quality", "needs_review"] + (["device_id"] if "device_id" in rows[0] else [])
        accumulator.add(pa.table({c: [r.get(c) for r in rows] for c in columns}))
    return accumulator.result()


def drift_alerts(stats: dict[str, dict], baseline: dict | None, thresholds: TrustThresholds) -> list[dict]:
    """Sources whose median quality is below the review threshold, or fell markedly since the
    baseline job: one alert per camera instead of one review line per photo."""
    alerts = []
    previous = (baseline or {}).get("sources", {})
    for source, s in stats.items():
        median = s["median_quality"]
        if median is None:
            continue
        if median < thresholds.review_quality:
            alerts.append({"source": source, "kind": "low_median_quality", "median_quality": median,
                           "message": f"{source}: median quality {median:.3f} is below {thresholds.review_quality} "
                                      f"over {s['n_ok']} photos — check the camera (night/IR mode, focus, lens, "
                                      f"backlight) rather than each photo"})
            continue
        before = previous.get(source, {}).get("median_quality")
        if before is not None and before - median >= thresholds.drift_drop:
            alerts.append({"source": source, "kind": "quality_drop", "median_quality": median,
                           "baseline_median_quality": before, "baseline_job": baseline["job_id"],
                           "message": f"{source}: median quality fell from {before:.3f} to {median:.3f} since job "
                                      f"{baseline['job_id']} — check the camera"})
    return alerts


def folded_into_alert(row: dict, alerted: set[str]) -> bool:
    return source_of(row) in alerted and bool(row["review_reasons"]) and \
        set(row["review_reasons"]) <= SOURCE_FOLDED_REASONS


def _value_counts(array) -> Counter:
    return Counter({entry["values"]: entry["counts"] for entry in pc.value_counts(array).to_pylist()
                    if entry["values"] is not None})


def _counting_columns(header: JobHeader) -> list[str]:
    columns = ["item_id", "status", "quality", "needs_review", "review_reasons", "model_id"]
    columns += ["decision"] if header.decides else []
    return columns + (["device_id"] if "device_id" in header.columns else [])


class JobCounts:
    """Pass one: counts, per-source statistics (with the quality values) and chunk timings."""

    def __init__(self):
        self.n_rows = 0
        self.status: Counter = Counter()
        self.reasons: Counter = Counter()
        self.decisions: Counter = Counter()
        self.needs_review = 0
        self.model_ids: set[str] = set()
        self.sources = SourceStats()
        self.chunk_seconds = array("d")  # per chunk that recorded it
        self.chunk_spans: list[tuple[float, float]] = []  # (started, finished) wall-clock times per chunk
        self.finished_at: float | None = None  # the last chunk's
        self.workers: set[str] = set()

    def add(self, table: pa.Table) -> None:
        self.n_rows += table.num_rows
        self.status += _value_counts(table.column("status"))
        self.reasons += _value_counts(pc.list_flatten(table.column("review_reasons")))
        if "decision" in table.column_names:
            self.decisions += _value_counts(table.column("decision"))
        self.needs_review += pc.sum(table.column("needs_review").cast(pa.int64())).as_py() or 0
        self.model_ids.update(v for v in pc.unique(table.column("model_id")).to_pylist() if v)
        self.sources.add(table)
        stats = part_stats(table)
        if "seconds" in stats:
            self.chunk_seconds.append(stats["seconds"])
            if "finished_at" in stats:
                self.chunk_spans.append((stats["finished_at"] - stats["seconds"], stats["finished_at"]))
        if "finished_at" in stats and (self.finished_at is None or stats["finished_at"] > self.finished_at):
            self.finished_at = stats["finished_at"]
        if "worker" in stats:
            self.workers.add(stats["worker"])


def running_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds during which at least one chunk was running: the time the job's results took.
    A job resumed a day after its first attempt failed is not timed over that day, nor over
    the queue before the first chunk started (``wall_seconds`` is the time since submission)."""
    total, end = 0.0, float("-inf")
    for started, finished in sorted(spans):
        if finished > end:
            total += finished - max(started, end)
            end = finished
    return total


def build_summary(header: JobHeader, counts: JobCounts, thresholds: TrustThresholds, baseline: dict | None) -> dict:
    sources = counts.sources.result()
    quality = counts.sources.all_quality()  # a new array: partitioned in place below
    seconds = np.frombuffer(counts.chunk_seconds, dtype=np.float64)
    created = datetime.fromisoformat(header.created_at).timestamp()
    finished = counts.finished_at if counts.finished_at is not None else created
    wall = max(finished - created, 1e-9)
    busy = running_seconds(counts.chunk_spans) or wall
    histogram = quality_histogram(quality)
    summary_counts = {
        "status": dict(sorted(counts.status.items())),
        "review_reasons": dict(sorted(counts.reasons.items())),
        "needs_review": counts.needs_review,
        "folded_into_source_alerts": 0,  # set by the second pass
    }
    if header.decides:
        summary_counts["decision"] = dict(sorted(counts.decisions.items()))
    return {
        "job_id": header.job_id,
        "run_id": header.run_id,
        "kind": header.kind,
        "mode": header.mode,
        "source": header.source,
        "created_at": header.created_at,
        "gallery": f"{header.gallery}@v{header.gallery_version}" if header.gallery_version else header.gallery,
        "n_items": header.n_items,
        "n_rows": counts.n_rows,
        "n_chunks": header.n_chunks,
        "counts": summary_counts,
        "quality": {
            "histogram": histogram,
            "median": _median(quality) if quality.size else None,
            "p05": float(np.percentile(quality, 5, overwrite_input=True)) if quality.size else None,
        },
        "sources": sources,
        "alerts": drift_alerts(sources, baseline, thresholds),
        "baseline_job": baseline["job_id"] if baseline else None,
        "model_ids": sorted(counts.model_ids),
        "thresholds": thresholds.__dict__,
        "timings": {
            "wall_seconds": round(wall, 3),
            "running_seconds": round(busy, 3),
            "items_per_second": round(header.n_items / busy, 2),
            "chunk_seconds_p50": round(float(np.median(seconds)), 3) if seconds.size else None,
            "chunk_seconds_max": round(float(seconds.max()), 3) if seconds.size else None,
        },
        "workers": sorted(counts.workers),
        "outputs": {
            "results": jobs.results_prefix(header.job_id, header.run_id),
            "review": jobs.review_key(header.job_id, header.run_id),
            "report": jobs.report_key(header.job_id, header.run_id),
        },
    }


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


def load_baseline(storage: Storage, header: JobHeader) -> dict | None:
    """The summary of the job to compare with: the header's choice, else the last finished
    job of the same kind (never the job itself)."""
    job_id = header.baseline_job_id
    if job_id is None and storage.exists(jobs.latest_job_key(header.kind)):
        job_id = json.loads(storage.get_bytes(jobs.latest_job_key(header.kind)))["job_id"]
    if job_id is None or job_id == header.job_id or not storage.exists(jobs.summary_key(job_id)):
        return None
    return json.loads(storage.get_bytes(jobs.summary_key(job_id)))


def publish_enrolment(storage: Storage, header: JobHeader, thresholds: TrustThresholds, model_id: str,
                      lock: Callable[[str], AbstractContextManager]) -> dict:
    builder = EnrolmentBuilder(thresholds.enrol_quality)
    for table in iter_parts(storage, header, ["employee_id", "item_id", "source_uri", "status", "error", "quality",
                                              "embedding"]):
        builder.add_table(table, header.job_id)  # templates, and which photo built which (members.parquet)
    enrolment = builder.build(thresholds.duplicate_similarity, model_id)
    report = {
        "job_id": header.job_id,
        "model_id": model_id,
        "mode": header.mode,  # attendance in another mode is refused (faceq.gallery.GalleryStore.check_mode)
        "enrolled": enrolment.table.num_rows,
        "rejected_images": enrolment.rejected,
        "employees_without_usable_image": enrolment.without_usable_image,
        "likely_duplicates": enrolment.duplicates,
        "enrol_quality": thresholds.enrol_quality,
    }
    with lock(header.gallery):  # two enrolments of one gallery never get the same version
        report = GalleryStore(storage).publish_version(header.gallery, enrolment, report,
                                                       update=header.gallery_update,
                                                       duplicate_similarity=thresholds.duplicate_similarity)
    return {"name": header.gallery, **{k: v for k, v in report.items() if k != "job_id"}}


def superseded_runs(storage: Storage, header: JobHeader) -> list[str]:
    """Runs of this job id that committing ``header``'s run replaces: every other run but one
    planned after it (its folder is named in ``current.json``)."""
    newer = None
    if storage.exists(jobs.current_run_key(header.job_id)):
        newer = json.loads(storage.get_bytes(jobs.current_run_key(header.job_id)))["run_id"]
    return [run for run in storage.list_children(jobs.runs_prefix(header.job_id)) if run not in (header.run_id, newer)]


def finalize(storage: Storage, header: JobHeader, thresholds: TrustThresholds,
             lock: Callable[[str], AbstractContextManager], still_current: Callable[[], bool] = lambda: True,
             ) -> dict | None:
    """Write review.csv and report.html of the run, then summary.json (the commit), then delete
    the runs it supersedes. Returns None, writing no summary, when the run was superseded."""
    from faceq.outputs.report import render_report

    counts = JobCounts()
    for table in iter_parts(storage, header, _counting_columns(header)):
        counts.add(table)
    summary = build_summary(header, counts, thresholds, load_baseline(storage, header))
    counts.sources = SourceStats()  # the quality values are summarised: not held through pass two
    if header.kind == "enroll":
        summary["gallery"] = publish_enrolment(storage, header, thresholds, sorted(counts.model_ids)[0], lock)
    if header.verifies and header.gallery_version:  # planned without the client's check (it refuses)
        summary["warnings"] = GalleryStore(storage).mode_warnings(header.gallery, header.gallery_version, header.mode)
    alerted = {a["source"] for a in summary["alerts"]}
    with tempfile.TemporaryDirectory(prefix="faceq-finalize-") as tmp:
        review = Path(tmp) / "review.csv"
        folded, listed = write_review(storage, header, alerted, review, thresholds=thresholds.__dict__)
        summary["counts"]["folded_into_source_alerts"] = folded
        storage.put_file(jobs.review_key(header.job_id, header.run_id), review, "text/csv; charset=utf-8")
    if header.report:
        html = render_report(summary, listed, storage, decides=header.decides)
        storage.put_bytes(jobs.report_key(header.job_id, header.run_id), html.encode(), "text/html; charset=utf-8")
    if not still_current():
        return None
    replaced = superseded_runs(storage, header)
    storage.put_bytes(jobs.summary_key(header.job_id), json.dumps(summary, indent=2).encode(), "application/json")
    if not jobs.is_one_off(header.job_id):  # a one-off call is nobody's drift baseline
        storage.put_bytes(jobs.latest_job_key(header.kind), json.dumps({"job_id": header.job_id}).encode(),
                          "application/json")
    for run_id in replaced:
        storage.delete_prefix(jobs.run_prefix(header.job_id, run_id))
    return summary
