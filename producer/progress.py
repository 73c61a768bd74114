"""Follow a job: a progress bar until every chunk is done, or a clear reason it cannot be."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from tqdm import tqdm

from faceq import jobs
from faceq.errors import JobError
from faceq.ledger import JobProgress, Ledger
from faceq.storage import Storage


@dataclass(frozen=True)
class WaitResult:
    progress: JobProgress
    summary: dict | None


def workers_online(timeout: float = 1.0) -> list[str]:
    """Names of the Celery workers that answer a ping on this broker."""
    from workers.app import app

    return sorted(name for reply in app.control.ping(timeout=timeout) or [] for name in reply)


def wait_for_job(
    ledger: Ledger,
    storage: Storage,
    job_id: str,
    timeout: float | None = None,
    poll_seconds: float = 0.5,
    show_progress: bool = True,
) -> WaitResult:
    """Block until the job's summary is written; raise ``JobError`` if it cannot complete."""
    progress = ledger.progress(job_id)
    if progress is None:
        raise JobError(f"no job {job_id!r} on this broker (was it submitted to another one?)")
    deadline = None if timeout is None else time.monotonic() + timeout
    with tqdm(total=progress.n_items, desc=job_id, unit="img", disable=not show_progress) as bar:
        while True:
            progress = ledger.progress(job_id)
            bar.update(progress.items_done - bar.n)
            if progress.complete:
                break
            if progress.failed and progress.chunks_done + len(progress.failed) >= progress.n_chunks:
                reasons = "; ".join(f"chunk {i}: {msg}" for i, msg in sorted(progress.failed.items())[:3])
                raise JobError(
                    f"job {job_id} cannot complete: {len(progress.failed)} of {progress.n_chunks} chunk(s) "
                    f"failed ({reasons}). Fix the cause and submit the job again with --job-id {job_id}."
                )
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(
                    f"job {job_id} is not done after {timeout:.0f}s ({progress.items_done}/{progress.n_items} items, "
                    f"{progress.chunks_pending} chunk(s) pending); follow it with `python -m producer wait {job_id}`"
                )
            time.sleep(poll_seconds)
    summary = json.loads(storage.get_bytes(jobs.summary_key(job_id)))
    return WaitResult(progress, summary)
