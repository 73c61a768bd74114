"""``python -m producer report``: a job's report.html, fetched or rendered again."""

from __future__ import annotations

import json

from faceq import jobs
from faceq.errors import JobError
from faceq.jobs import JobManifest
from faceq.report import render_report
from faceq.storage import Storage
from faceq.summary import read_rows


def fetch_report(storage: Storage, job_id: str, regenerate: bool = False) -> bytes:
    if not storage.exists(jobs.summary_key(job_id)):
        raise JobError(f"job {job_id} has no summary in {storage.url} yet: is it finished? (python -m producer wait)")
    if not regenerate and storage.exists(jobs.report_key(job_id)):
        return storage.get_bytes(jobs.report_key(job_id))
    summary = json.loads(storage.get_bytes(jobs.summary_key(job_id)))
    manifest = JobManifest.from_json(storage.get_bytes(jobs.manifest_key(job_id)))
    html = render_report(summary, read_rows(storage, manifest), storage).encode()
    storage.put_bytes(jobs.report_key(job_id), html, "text/html")
    return html
