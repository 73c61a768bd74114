"""Resume a job from storage alone: rebuild its Redis state and run only the chunks without parts.

For a job whose Redis state was lost (a restart without persistence), whose messages were
lost, or whose chunks failed for a reason that has since been fixed. Safe to run on a live
job: chunks already recorded are skipped by the workers, and parts have deterministic names.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from faceq.job import spec as jobs
from faceq.errors import JobError
from faceq.job.spec import JobHeader
from faceq.job.ledger import Ledger
from faceq.storage.store import Storage
from faceq.producer.submit import enqueue, finalize_later

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resumed:
    header: JobHeader
    chunks_with_parts: int
    chunks_enqueued: int
    already_complete: bool


def current_header(storage: Storage, job_id: str) -> JobHeader | None:
    """The header of the job's latest planned run, or None when storage has no such job."""
    jobs.validate_job_id(job_id)
    if not storage.exists(jobs.current_run_key(job_id)):
        return None
    run_id = json.loads(storage.get_bytes(jobs.current_run_key(job_id)))["run_id"]
    return JobHeader.from_json(storage.get_bytes(jobs.header_key(job_id, run_id)))


def committed_summary(storage: Storage, job_id: str) -> dict | None:
    if not storage.exists(jobs.summary_key(job_id)):
        return None
    return json.loads(storage.get_bytes(jobs.summary_key(job_id)))


def resume(storage: Storage, ledger: Ledger, job_id: str, broker_url: str | None = None) -> Resumed:
    header = current_header(storage, job_id)
    if header is None:
        raise JobError(f"no job {job_id!r} in {storage.url}: nothing to resume")
    summary = committed_summary(storage, job_id)
    done = {index: header.chunk_items(index) for key in storage.list_keys(jobs.results_prefix(job_id, header.run_id))
            if (index := jobs.part_index(key)) is not None and index < header.n_chunks}
    created_at = datetime.fromisoformat(header.created_at).timestamp()
    ledger.restore(job_id, header.run_id, header.kind, header.n_chunks, header.n_items, created_at, done,
                   hidden=jobs.is_one_off(job_id))
    if summary is not None and summary.get("run_id") == header.run_id:
        ledger.mark_done(job_id, header.run_id)
        return Resumed(header, len(done), 0, already_complete=True)
    missing = [index for index in range(header.n_chunks) if index not in done]
    if missing:
        enqueue(header, missing, broker_url)
    else:
        finalize_later(header, broker_url)
    log.info("job %s resumed: %d of %d chunks had parts, %d enqueued", job_id, len(done), header.n_chunks,
             len(missing))
    return Resumed(header, len(done), len(missing), already_complete=False)
