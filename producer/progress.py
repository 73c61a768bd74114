"""Follow a job: a progress bar until its summary is written, or a clear reason it cannot be.

Waiting survives broker blips (it says so, once per outage, and keeps polling) and tells a
job whose Redis state was lost from a job that never existed: the first can be resumed from
storage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from tqdm import tqdm

from faceq.errors import JobError
from faceq.job.ledger import JobProgress, Ledger
from faceq.queue.heartbeats import read_heartbeats
from faceq.retry import REDIS_ERRORS
from faceq.storage.store import Storage
from faceq.producer.resume import committed_summary, current_header

log = logging.getLogger(__name__)


class JobStateLost(JobError):
    """The job's plan is in storage but Redis no longer knows it: it can be resumed."""


@dataclass(frozen=True)
class WaitResult:
    progress: JobProgress | None  # None when the job was finished and Redis has forgotten it
    summary: dict


def workers_online(ledger: Ledger) -> list[str]:
    """Names of the workers whose heartbeat is fresh on this broker (``faceq workers``' source:
    no Celery needed here, and no broadcast every worker must answer)."""
    return sorted(beat.get("worker", "?") for beat in read_heartbeats(ledger.redis))


def lost_state_message(job_id: str) -> str:
    return (f"job {job_id}: its state is gone from Redis (restarted without persistence, or expired) but its plan "
            f"is in storage; `python -m faceq.producer resume {job_id}` runs only the chunks without results")


def finished_summary(storage: Storage, job_id: str, run_id: str | None = None) -> dict | None:
    """The committed summary of ``run_id`` (default: the job's current run), if written."""
    summary = committed_summary(storage, job_id)
    if summary is None:
        return None
    if run_id is None:
        header = current_header(storage, job_id)
        run_id = header.run_id if header else summary.get("run_id")
    return summary if summary.get("run_id") == run_id else None


def wait_for_job(
    ledger: Ledger,
    storage: Storage,
    job_id: str,
    timeout: float | None = None,
    poll_seconds: float = 0.5,
    show_progress: bool = True,
    notify: Callable[[str], None] = log.warning,
) -> WaitResult:
    """Block until the job's summary is written; raise ``JobError`` if it cannot complete."""
    deadline = None if timeout is None else time.monotonic() + timeout
    broker = _broker_url(ledger)
    outage_since: float | None = None
    progress: JobProgress | None = None
    bar = tqdm(desc=job_id, unit="img", disable=not show_progress)
    try:
        while True:
            try:
                progress = ledger.progress(job_id)
                if outage_since is not None:
                    notify(f"broker {broker} is back after {time.monotonic() - outage_since:.0f}s")
                    outage_since = None
            except REDIS_ERRORS as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    notify(f"broker {broker} unreachable ({type(exc).__name__}); still waiting for job {job_id}, "
                           f"retrying")
            if outage_since is None:
                if progress is None:
                    summary = finished_summary(storage, job_id)
                    if summary is not None:
                        return WaitResult(None, summary)
                    if current_header(storage, job_id) is not None:
                        raise JobStateLost(lost_state_message(job_id))
                    raise JobError(f"no job {job_id!r} on this broker or in {storage.url}")
                bar.total = progress.n_items
                bar.update(progress.items_done - bar.n)
                if progress.complete:
                    summary = finished_summary(storage, job_id, progress.run_id)
                    if summary is not None:
                        return WaitResult(progress, summary)
                if progress.cancelled:
                    raise JobError(f"job {job_id} was cancelled; submit it again with --job-id {job_id} to re-run it")
                if progress.cannot_complete:
                    reasons = "; ".join(f"{'chunk ' if k.isdigit() else ''}{k}: {msg}"
                                        for k, msg in sorted(progress.failed.items())[:3])
                    raise JobError(
                        f"job {job_id} cannot complete: {len(progress.failed)} failure(s) ({reasons}). Fix the cause "
                        f"and run `python -m faceq.producer resume {job_id}` (only chunks without results run again)."
                    )
            if deadline is not None and time.monotonic() > deadline:
                done = f"{progress.items_done}/{progress.n_items} items" if progress else "state unknown"
                raise JobError(f"job {job_id} is not done after {timeout:.0f}s ({done}); follow it with "
                               f"`python -m faceq.producer wait {job_id}`")
            time.sleep(poll_seconds)
    finally:
        bar.close()


def _broker_url(ledger: Ledger) -> str:
    """Where the ledger connects, with any password masked."""
    kwargs = ledger.redis.connection_pool.connection_kwargs
    password = ":***@" if kwargs.get("password") else ""
    return f"redis://{password}{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

