"""The Celery application, configured only from ``celeryconfig.py``.

Importing this module is cheap (no torch): producers import it to send tasks by name, and
only a worker imports ``faceq.workers.tasks`` (through ``include``) and with it the model.
"""

from __future__ import annotations

from typing import Iterable

from celery import Celery

from faceq.job.spec import JobHeader

PROCESS_CHUNK = "faceq.process_chunk"
FINALIZE_JOB = "faceq.finalize_job"

app = Celery("faceq", include=["faceq.workers.tasks"])
app.config_from_object("faceq.workers.celeryconfig")


def send_chunks(header: JobHeader, indices: Iterable[int], broker_url: str | None = None) -> int:
    """One reference-only message per chunk, named for Flower: ``<job>#<index> (<n> items)``.
    Used by producers (submit, resume) and by the workers' sweeper (lost messages)."""
    sent = 0
    with app.connection_for_write(broker_url) as connection:
        producer = app.amqp.Producer(connection, auto_declare=False)
        for index in indices:
            app.send_task(PROCESS_CHUNK, args=[header.job_id, header.run_id, index], producer=producer,
                          argsrepr=f"{header.job_id}#{index} ({header.chunk_items(index)} items)")
            sent += 1
    return sent


def send_finalize(header: JobHeader, broker_url: str | None = None) -> None:
    """Ask any worker to finalize a run whose every chunk has its part."""
    with app.connection_for_write(broker_url) as connection:
        app.send_task(FINALIZE_JOB, args=[header.job_id, header.run_id], connection=connection,
                      argsrepr=f"{header.job_id} finalize")
