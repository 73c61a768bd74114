"""Finalize a job: read every chunk's rows and write ``summary.json`` and ``review.csv``.

Runs once per job (the ledger's finalize lease) and is idempotent: the same parts give the
same files, so a redelivered finalize rewrites identical content.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import numpy as np
import pyarrow as pa

from faceq import jobs
from faceq.jobs import JobManifest
from faceq.ledger import JobProgress
from faceq.results import read_parquet
from faceq.storage import Storage

HISTOGRAM_EDGES = [round(0.1 * i, 1) for i in range(11)]
_SUMMARY_COLUMNS = ["item_id", "source_uri", "status", "error", "quality", "needs_review", "review_reasons", "model_id"]


def read_rows(storage: Storage, manifest: JobManifest) -> pa.Table:
    """All rows of a job except embeddings (a summary needs no 2 KB vectors)."""
    extra = _extra_columns(manifest)
    tables = [
        read_parquet(storage.get_bytes(jobs.part_key(manifest.job_id, chunk.index)), _SUMMARY_COLUMNS + extra)
        for chunk in manifest.chunks()
    ]
    return pa.concat_tables(tables)


def _extra_columns(manifest: JobManifest) -> list[str]:
    return list(manifest.items[0].fields) if manifest.items else []


def quality_histogram(quality: np.ndarray) -> dict:
    """Counts per 0.1 bin over [0, 1]; scores ≥ 1 (possible with exp(logvar)) in the last bin."""
    counts, _ = np.histogram(np.clip(quality, 0.0, 1.0), bins=HISTOGRAM_EDGES)
    return {"edges": HISTOGRAM_EDGES, "counts": counts.tolist()}


def build_summary(manifest: JobManifest, rows: pa.Table, progress: JobProgress, chunk_stats: dict[int, dict]) -> dict:
    status = Counter(rows.column("status").to_pylist())
    reasons = Counter(r for reasons in rows.column("review_reasons").to_pylist() for r in reasons)
    quality = rows.column("quality").to_numpy(zero_copy_only=False)
    quality = quality[~np.isnan(quality.astype(np.float64))]
    seconds = [s["seconds"] for s in chunk_stats.values()]
    finished = max((s["finished_at"] for s in chunk_stats.values()), default=progress.created_at)
    wall = max(finished - progress.created_at, 1e-9)
    return {
        "job_id": manifest.job_id,
        "run_id": manifest.run_id,
        "kind": manifest.kind,
        "mode": manifest.mode,
        "source": manifest.source,
        "n_items": len(manifest.items),
        "n_rows": rows.num_rows,
        "n_chunks": manifest.n_chunks,
        "counts": {
            "status": dict(sorted(status.items())),
            "review_reasons": dict(sorted(reasons.items())),
            "needs_review": int(sum(rows.column("needs_review").to_pylist())),
        },
        "quality": {
            "histogram": quality_histogram(quality),
            "median": float(np.median(quality)) if quality.size else None,
            "p05": float(np.percentile(quality, 5)) if quality.size else None,
        },
        "model_ids": sorted(set(rows.column("model_id").to_pylist())),
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
        },
    }


def review_csv(rows: pa.Table, extra_columns: list[str]) -> bytes:
    """One line per flagged item, with what a reviewer needs to find and judge it."""
    flagged = rows.filter(rows.column("needs_review")).to_pylist()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["item_id", "source_uri", "status", "quality", "review_reasons", "error", *extra_columns])
    for row in flagged:
        quality = "" if row["quality"] is None else f"{row['quality']:.4f}"
        reasons = ";".join(row["review_reasons"])
        writer.writerow(
            [row["item_id"], row["source_uri"], row["status"], quality, reasons, row["error"] or ""]
            + [row[c] or "" for c in extra_columns]
        )
    return out.getvalue().encode()


def finalize(storage: Storage, manifest: JobManifest, progress: JobProgress, chunk_stats: dict[int, dict]) -> dict:
    """Write review.csv, then summary.json (last: its presence means the job is complete)."""
    rows = read_rows(storage, manifest)
    summary = build_summary(manifest, rows, progress, chunk_stats)
    storage.put_bytes(jobs.review_key(manifest.job_id), review_csv(rows, _extra_columns(manifest)), "text/csv")
    storage.put_bytes(jobs.summary_key(manifest.job_id), json.dumps(summary, indent=2).encode(), "application/json")
    return summary
