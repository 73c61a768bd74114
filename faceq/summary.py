"""Finalize a job: read every chunk's rows, write review.csv, summary.json and report.html.

Runs once per job (the ledger's finalize lease) and is idempotent: the same parts give the
same files. Enrolment jobs also publish a new gallery version. Per-source statistics (the
manifest's ``device_id``, else the top-level folder) are compared with the last job of the
same kind so that a camera whose quality collapses is named once, as a camera problem.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from contextlib import AbstractContextManager
from typing import Callable

import numpy as np
import pyarrow as pa

from faceq import jobs
from faceq.gallery import GalleryStore, build_enrolment
from faceq.jobs import JobManifest
from faceq.ledger import JobProgress
from faceq.results import read_parquet
from faceq.settings import TrustThresholds
from faceq.storage import Storage

HISTOGRAM_EDGES = [round(0.1 * i, 1) for i in range(11)]
_COLUMNS = ["item_id", "source_uri", "status", "error", "quality", "needs_review", "review_reasons", "face_count",
            "model_id"]
_VERIFICATION = ["decision", "similarity", "gallery", "best_candidate_id", "best_candidate_score"]
SOURCE_FOLDED_REASONS = {"low_quality", "likely_not_a_face"}  # explained by a source alert


def extra_columns(manifest: JobManifest) -> list[str]:
    return list(manifest.items[0].fields) if manifest.items else []


def read_rows(storage: Storage, manifest: JobManifest, embeddings: bool = False) -> pa.Table:
    columns = _COLUMNS + (_VERIFICATION if manifest.gallery and manifest.kind == "attendance" else [])
    columns += extra_columns(manifest) + (["embedding"] if embeddings else [])
    return pa.concat_tables(
        read_parquet(storage.get_bytes(jobs.part_key(manifest.job_id, chunk.index)), columns)
        for chunk in manifest.chunks()
    )


def source_of(row: dict) -> str:
    """Where a photo came from: the manifest's device, else its top-level folder."""
    if row.get("device_id"):
        return row["device_id"]
    return row["item_id"].split("/", 1)[0] if "/" in row["item_id"] else "(top level)"


def quality_histogram(quality: np.ndarray) -> dict:
    """Counts per 0.1 bin over [0, 1]; scores ≥ 1 (possible with exp(logvar)) in the last bin."""
    counts, _ = np.histogram(np.clip(quality, 0.0, 1.0), bins=HISTOGRAM_EDGES)
    return {"edges": HISTOGRAM_EDGES, "counts": counts.tolist()}


def source_stats(rows: list[dict]) -> dict[str, dict]:
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(source_of(row), []).append(row)
    stats = {}
    for source, items in sorted(by_source.items()):
        quality = [r["quality"] for r in items if r["quality"] is not None]
        stats[source] = {
            "n_rows": len(items),
            "n_ok": sum(r["status"] == "ok" for r in items),
            "n_flagged": sum(r["needs_review"] for r in items),
            "median_quality": round(float(np.median(quality)), 4) if quality else None,
        }
    return stats


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


def build_summary(manifest: JobManifest, rows: pa.Table, progress: JobProgress, chunk_stats: dict[int, dict],
                  thresholds: TrustThresholds, baseline: dict | None) -> dict:
    records = rows.to_pylist()
    status = Counter(r["status"] for r in records)
    reasons = Counter(reason for r in records for reason in r["review_reasons"])
    quality = np.array([r["quality"] for r in records if r["quality"] is not None], dtype=np.float64)
    seconds = [s["seconds"] for s in chunk_stats.values()]
    finished = max((s["finished_at"] for s in chunk_stats.values()), default=progress.created_at)
    wall = max(finished - progress.created_at, 1e-9)
    sources = source_stats(records)
    alerts = drift_alerts(sources, baseline, thresholds)
    alerted = {a["source"] for a in alerts}
    counts = {
        "status": dict(sorted(status.items())),
        "review_reasons": dict(sorted(reasons.items())),
        "needs_review": sum(r["needs_review"] for r in records),
        "folded_into_source_alerts": sum(folded_into_alert(r, alerted) for r in records),
    }
    if "decision" in rows.column_names:
        counts["decision"] = dict(sorted(Counter(r["decision"] for r in records).items()))
    return {
        "job_id": manifest.job_id,
        "run_id": manifest.run_id,
        "kind": manifest.kind,
        "mode": manifest.mode,
        "source": manifest.source,
        "gallery": f"{manifest.gallery}@v{manifest.gallery_version}" if manifest.gallery_version else manifest.gallery,
        "n_items": len(manifest.items),
        "n_rows": rows.num_rows,
        "n_chunks": manifest.n_chunks,
        "counts": counts,
        "quality": {
            "histogram": quality_histogram(quality),
            "median": float(np.median(quality)) if quality.size else None,
            "p05": float(np.percentile(quality, 5)) if quality.size else None,
        },
        "sources": sources,
        "alerts": alerts,
        "baseline_job": baseline["job_id"] if baseline else None,
        "model_ids": sorted({r["model_id"] for r in records}),
        "thresholds": thresholds.__dict__,
        "timings": {
            "wall_seconds": round(wall, 3),
            "items_per_second": round(len(manifest.items) / wall, 2),
            "chunk_seconds_p50": round(float(np.median(seconds)), 3) if seconds else None,
            "chunk_seconds_max": round(max(seconds), 3) if seconds else None,
        },
        "workers": sorted({s["worker"] for s in chunk_stats.values()}),
        "outputs": {
            "results": jobs.results_prefix(manifest.job_id),
            "review": jobs.review_key(manifest.job_id),
            "report": jobs.report_key(manifest.job_id),
        },
    }


def review_csv(rows: pa.Table, extra: list[str], alerted: set[str]) -> bytes:
    """One line per flagged item, with what a reviewer needs to find and judge it."""
    verification = [c for c in _VERIFICATION if c in rows.column_names and c != "gallery"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["item_id", "source_uri", "status", "quality", "review_reasons", "error", *verification,
                     "source", "source_alert", *extra])
    for row in rows.filter(rows.column("needs_review")).to_pylist():
        writer.writerow(
            [row["item_id"], row["source_uri"], row["status"], _fmt(row["quality"]), ";".join(row["review_reasons"]),
             row["error"] or ""]
            + [_fmt(row[c]) for c in verification]
            + [source_of(row), "yes" if folded_into_alert(row, alerted) else ""]
            + [row[c] or "" for c in extra]
        )
    return out.getvalue().encode()


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def load_baseline(storage: Storage, manifest: JobManifest) -> dict | None:
    """The summary of the job to compare with: the manifest's choice, else the last finished
    job of the same kind (never the job itself)."""
    job_id = manifest.baseline_job_id
    if job_id is None and storage.exists(jobs.latest_job_key(manifest.kind)):
        job_id = json.loads(storage.get_bytes(jobs.latest_job_key(manifest.kind)))["job_id"]
    if job_id is None or job_id == manifest.job_id or not storage.exists(jobs.summary_key(job_id)):
        return None
    return json.loads(storage.get_bytes(jobs.summary_key(job_id)))


def publish_enrolment(storage: Storage, manifest: JobManifest, table: pa.Table, thresholds: TrustThresholds,
                      lock: Callable[[str], AbstractContextManager]) -> dict:
    rows = table.to_pylist()
    model_ids = sorted({r["model_id"] for r in rows})
    enrolment = build_enrolment(rows, thresholds.enrol_quality, thresholds.duplicate_similarity, model_ids[0])
    report = {
        "job_id": manifest.job_id,
        "model_id": model_ids[0],
        "enrolled": enrolment.table.num_rows,
        "rejected_images": enrolment.rejected,
        "employees_without_usable_image": enrolment.without_usable_image,
        "likely_duplicates": enrolment.duplicates,
        "enrol_quality": thresholds.enrol_quality,
    }
    with lock(manifest.gallery):  # two enrolments of one gallery never get the same version
        version = GalleryStore(storage).publish(manifest.gallery, enrolment, report)
    return {"name": manifest.gallery, "version": version, **{k: v for k, v in report.items() if k != "job_id"}}


def finalize(storage: Storage, manifest: JobManifest, progress: JobProgress, chunk_stats: dict[int, dict],
             thresholds: TrustThresholds, lock: Callable[[str], AbstractContextManager]) -> dict:
    """Write review.csv, report.html, then summary.json (last: its presence means complete)."""
    from faceq.report import render_report

    enrolling = manifest.kind == "enroll"
    rows = read_rows(storage, manifest, embeddings=enrolling)  # once; embeddings only to build templates
    summary = build_summary(manifest, rows, progress, chunk_stats, thresholds, load_baseline(storage, manifest))
    if enrolling:
        summary["gallery"] = publish_enrolment(storage, manifest, rows, thresholds, lock)
    alerted = {a["source"] for a in summary["alerts"]}
    storage.put_bytes(jobs.review_key(manifest.job_id), review_csv(rows, extra_columns(manifest), alerted), "text/csv")
    if manifest.report:
        storage.put_bytes(jobs.report_key(manifest.job_id), render_report(summary, rows, storage).encode(),
                          "text/html")
    storage.put_bytes(jobs.summary_key(manifest.job_id), json.dumps(summary, indent=2).encode(), "application/json")
    storage.put_bytes(jobs.latest_job_key(manifest.kind), json.dumps({"job_id": manifest.job_id}).encode(),
                      "application/json")
    return summary
