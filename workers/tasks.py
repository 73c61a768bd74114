"""Celery tasks: thin adapters from messages to the services in ``workers.service``."""

from __future__ import annotations

import logging

import redis
from celery import Task
from celery.exceptions import WorkerShutdown
from celery.signals import celeryd_after_setup, worker_shutdown

from faceq.errors import DeviceOutOfMemory, FaceqError, StorageError
from faceq.jobs import ChunkSpec
from faceq.ledger import ChunkRecord
from workers.app import FINALIZE_JOB, PROCESS_CHUNK, app
from workers.runtime import get_runtime, shutdown_runtime
from workers.service import FinalizeOutcome, finalize_job

log = logging.getLogger(__name__)

TRANSIENT = (StorageError, DeviceOutOfMemory, redis.ConnectionError, redis.TimeoutError)


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


class ChunkTask(Task):
    """Records a chunk that gave up (after its retries) so ``producer wait`` can say why."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        spec = ChunkSpec.from_message(args[0] if args else kwargs["chunk"])
        message = f"{type(exc).__name__}: {exc}"
        get_runtime().ledger.record_failure(spec.job_id, spec.run_id, spec.index, message)
        log.error("job %s chunk %d failed for good: %s", spec.job_id, spec.index, message)


@app.task(
    name=PROCESS_CHUNK,
    base=ChunkTask,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=60,
)
def process_chunk(chunk: dict) -> dict:
    spec = ChunkSpec.from_message(chunk)
    runtime = get_runtime()
    outcome = runtime.processor.process(spec)
    # The last chunk finalizes the job itself (one task fewer per job: it matters for
    # one-image jobs); if another worker holds the finalize lease, a finalize task waits it out.
    if outcome.record is ChunkRecord.COMPLETE:
        outcome_of_finalize = finalize_job(runtime.storage, runtime.ledger, spec.job_id, spec.run_id,
                                           runtime.settings.thresholds)
        if outcome_of_finalize is FinalizeOutcome.BUSY:
            finalize_job_task.apply_async((spec.job_id, spec.run_id), countdown=15)
    return {"items": outcome.n_items, "errors": outcome.n_errors, "flagged": outcome.n_flagged}


@app.task(name=FINALIZE_JOB, bind=True, autoretry_for=TRANSIENT, retry_backoff=2, max_retries=10)
def finalize_job_task(self, job_id: str, run_id: str) -> str:
    runtime = get_runtime()
    outcome = finalize_job(runtime.storage, runtime.ledger, job_id, run_id, runtime.settings.thresholds)
    if outcome is FinalizeOutcome.BUSY:
        raise self.retry(countdown=15, max_retries=40)
    return outcome.value
