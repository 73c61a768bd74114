"""Celery tasks: thin adapters from chunk references to the services in ``faceq.workers.service``.

A task never lets a chunk vanish: whatever goes wrong after the retries inside the services
(storage and Redis outages are ridden out there) is recorded in the ledger as that chunk's
failure, with the reason, before the message is acknowledged.
"""

from __future__ import annotations

import logging
import time

from celery.exceptions import WorkerShutdown
from celery.signals import after_setup_logger, after_setup_task_logger, celeryd_after_setup, worker_shutdown

from faceq.errors import FaceqError
from faceq.job.spec import ChunkRef
from faceq.job.ledger import ChunkRecord
from faceq.outputs.placeholder import warning_for
from faceq.redact import install_log_redaction
from faceq.retry import redis_retry
from faceq.workers.app import FINALIZE_JOB, PROCESS_CHUNK, app
from faceq.workers.runtime import Runtime, get_runtime, shutdown_runtime
from faceq.workers.service import FINALIZE_LEASE_SECONDS, FinalizeOutcome, finalize_job

log = logging.getLogger(__name__)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_secrets_in_logs(logger, **_):
    """Celery logs its broker URL and our errors quote URLs: mask credentials in every line."""
    install_log_redaction(logger)


@celeryd_after_setup.connect
def _load_model_before_first_task(sender: str, **_):
    """Load and warm the model after logging is set up and before the worker consumes anything.

    A worker that cannot load its model must not start: Celery logs and ignores exceptions
    raised by signal handlers, so a failure is turned into a shutdown with exit code 1.
    """
    try:
        get_runtime(sender)
    except Exception as exc:
        log.critical("faceq worker cannot start: %s", exc, exc_info=not isinstance(exc, FaceqError))
        raise WorkerShutdown(1) from exc


@worker_shutdown.connect
def _stop_runtime(**_):
    shutdown_runtime()


def _record_failure(runtime: Runtime, job_id: str, run_id: str, what: int | str, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"
    log.error("job %s %s failed for good: %s", job_id, f"chunk {what}" if isinstance(what, int) else what, message,
              exc_info=not isinstance(exc, FaceqError))
    redis_retry(lambda: runtime.ledger.record_failure(job_id, run_id, what, message), "recording a failure",
                runtime.settings.redis_retry_seconds)


def _finalize(runtime: Runtime, job_id: str, run_id: str) -> FinalizeOutcome | None:
    """Finalize, or wait while another worker holds the lease: a live holder finishes (the job is
    then done), a dead one's lease lapses within FINALIZE_LEASE_SECONDS and this call takes over.
    Returning on BUSY instead would lose the finalize if the holder had died."""
    deadline = time.monotonic() + 5 * FINALIZE_LEASE_SECONDS
    try:
        while True:
            outcome = finalize_job(runtime.storage, runtime.ledger, job_id, run_id, runtime.settings.thresholds,
                                   runtime.settings.redis_retry_seconds)
            if outcome is not FinalizeOutcome.BUSY or time.monotonic() > deadline:
                return outcome  # still BUSY at the deadline: the holder is alive and renewing its lease
            time.sleep(2)
    except Exception as exc:
        _record_failure(runtime, job_id, run_id, "finalize", exc)
        return None


@app.task(name=PROCESS_CHUNK)
def process_chunk(job_id: str, run_id: str, index: int) -> dict:
    runtime = get_runtime()
    try:
        outcome = runtime.processor.process(ChunkRef(job_id, run_id, index))
    except Exception as exc:  # after the services' own retries: record why, never drop silently
        runtime.processor.metrics.count_chunk(None)
        _record_failure(runtime, job_id, run_id, index, exc)
        return {"failed": str(exc)}
    runtime.processor.metrics.count_chunk(outcome)
    # The last chunk finalizes the job itself (one task fewer per job: it matters for one-image
    # jobs). If another live worker holds the finalize lease, it writes the summary; if it dies,
    # its own message comes back and the next worker takes over.
    if outcome.record is ChunkRecord.COMPLETE:
        _finalize(runtime, job_id, run_id)
    return {"items": outcome.n_items, "errors": outcome.n_errors, "flagged": outcome.n_flagged,
            "skipped": outcome.skipped, "random_weights": runtime.engine.random_weights,
            **({"warning": warning} if (warning := warning_for([runtime.engine.model_id])) else {})}


@app.task(name=FINALIZE_JOB)
def finalize_job_task(job_id: str, run_id: str) -> str:
    """Finalize a run whose chunks all have parts (sent by ``producer resume``)."""
    outcome = _finalize(get_runtime(), job_id, run_id)
    return outcome.value if outcome else "failed"
