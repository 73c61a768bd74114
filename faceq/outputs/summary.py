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

import json
import tempfile
from array import array
from collections import Counter
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from faceq.job import spec as jobs
from faceq.gallery import EnrolmentBuilder, GalleryStore
from faceq.job.spec import JobHeader
from faceq.outputs.review_queue import iter_parts, source_column, write_review
from faceq.outputs.results import part_stats
from faceq.settings import TrustThresholds
from faceq.storage.store import Storage

HISTOGRAM_EDGES = [round(0.1 * i, 1) for i in range(11)]
_BLOCK = 1 << 13  # values clipped and binned at a time by quality_histogram








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
