"""``python -m faceq.producer report``: a job's report.html, fetched or rendered again."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from faceq.job import spec as jobs
from faceq.errors import JobError
from faceq.job.spec import JobHeader
from faceq.outputs.report import render_report
from faceq.redact import redact_url
from faceq.storage.store import Storage
from faceq.outputs.review_queue import write_review
from faceq.producer.resume import current_header


def fetch_report(storage: Storage, job_id: str, regenerate: bool = False) -> bytes:
    jobs.validate_job_id(job_id)
    if not storage.exists(jobs.summary_key(job_id)):
        if current_header(storage, job_id) is None:  # as `faceq status` says it
            raise JobError(f"no job {job_id!r} in {redact_url(storage.url)}")
        raise JobError(f"job {job_id} has no summary in {storage.url} yet: is it finished? (python -m faceq.producer wait)")
    summary = json.loads(storage.get_bytes(jobs.summary_key(job_id)))
    key = summary["outputs"]["report"]
    if not regenerate and storage.exists(key):
        return storage.get_bytes(key)
    header = JobHeader.from_json(storage.get_bytes(jobs.header_key(job_id, summary["run_id"])))
    alerted = {a["source"] for a in summary["alerts"]}
    with tempfile.TemporaryDirectory(prefix="faceq-report-") as tmp:
        _, listed = write_review(storage, header, alerted, Path(tmp) / "review.csv",
                                 thresholds=summary.get("thresholds"))
    html = render_report(summary, listed, storage, decides=header.decides).encode()
    storage.put_bytes(key, html, "text/html; charset=utf-8")
    return html
