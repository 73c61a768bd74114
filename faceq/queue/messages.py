"""The two task messages faceq sends, in Celery's message protocol 2, sent with kombu alone.

Producers are other people's programs (a kiosk, a cron script, a Django app): enqueueing a job
must not install Celery and its worker machinery there. kombu is Celery's own messaging
library; a message is Celery's documented protocol 2 (headers + ``[args, kwargs, embed]``), the
same bytes ``app.send_task`` writes, published to the default exchange with the queue's name as
routing key. The workers' sweeper sends lost chunks through the same functions.

Messages carry references only: ``(job_id, run_id, chunk index)``; the items are in storage.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Iterable

from faceq.job.spec import JobHeader

PROCESS_CHUNK = "faceq.process_chunk"
FINALIZE_JOB = "faceq.finalize_job"
_NO_CALLBACKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(task: str, args: list, argsrepr: str) -> tuple[dict, list, dict]:
    """(headers, body, properties) of one protocol-2 task message."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": task_id, "parent_id": None, "argsrepr": argsrepr, "kwargsrepr": "{}",
        "origin": f"{os.getpid()}@{socket.gethostname()}", "ignore_result": True,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    return headers, [args, {}, _NO_CALLBACKS], {"correlation_id": task_id}


def default_queue() -> str:
    """The queue the workers consume (``FACEQ_QUEUE``, as celeryconfig reads it)."""
    return os.environ.get("FACEQ_QUEUE") or "faceq"


def _publish(broker_url: str, queue_name: str | None, messages: Iterable[tuple[str, list, str]]) -> int:
    from kombu import Connection, Producer, Queue  # on first send: `from faceq import Client` stays quick

    queue_name = queue_name or default_queue()
    queue = Queue(queue_name, routing_key=queue_name)
    sent = 0
    with Connection(broker_url) as connection:
        producer = Producer(connection, auto_declare=False)
        declared = False
        for task, args, argsrepr in messages:
            headers, body, properties = task_message(task, args, argsrepr)
            producer.publish(body, routing_key=queue_name, exchange="", serializer="json", headers=headers,
                             delivery_mode=2, retry=True, declare=[] if declared else [queue], **properties)
            declared = True
            sent += 1
    return sent


def send_chunks(header: JobHeader, indices: Iterable[int], broker_url: str, queue_name: str | None = None) -> int:
    """One reference-only message per chunk, named for Flower: ``<job>#<index> (<n> items)``.
    Used by producers (submit, resume) and by the workers' sweeper (lost messages)."""
    return _publish(broker_url, queue_name, (
        (PROCESS_CHUNK, [header.job_id, header.run_id, index],
         f"{header.job_id}#{index} ({header.chunk_items(index)} items)") for index in indices))


def send_finalize(header: JobHeader, broker_url: str, queue_name: str | None = None) -> None:
    """Ask any worker to finalize a run whose every chunk has its part."""
    _publish(broker_url, queue_name, [(FINALIZE_JOB, [header.job_id, header.run_id], f"{header.job_id} finalize")])
