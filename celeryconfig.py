"""Every Celery setting of faceq, in one place, read from the environment.

Delivery: at-least-once. A chunk is acknowledged only after its Parquet object is written
(``task_acks_late``); a worker that dies mid-chunk has its message redelivered
(``task_reject_on_worker_lost``; on Redis after ``visibility_timeout``). Outputs have
deterministic names, so a redelivered chunk overwrites its own part instead of adding rows.

Prefetch: each worker reserves at most ``worker_prefetch_multiplier × concurrency`` messages.
With 1, a worker holds no chunk it is not working on, so an idle worker on another GPU can
take the next one (chunks are large: hoarding would serialise a job onto one GPU).
"""

import os

from kombu import Queue

broker_url = os.environ.get("FACEQ_BROKER_URL") or "redis://127.0.0.1:6379/0"
broker_connection_retry_on_startup = True
# Redis redelivers an unacknowledged message after this many seconds; it must exceed the
# longest chunk (256 images take seconds on a GPU, about a minute on a CPU).
broker_transport_options = {"visibility_timeout": int(os.environ.get("FACEQ_VISIBILITY_TIMEOUT", "3600"))}

# json only: pickle would let anyone who can write to the broker run code on the workers.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

# How often a chunk retries a transient failure (storage or Redis unreachable) before the job
# is marked as unable to complete.
task_annotations = {"faceq.process_chunk": {"max_retries": int(os.environ.get("FACEQ_CHUNK_MAX_RETRIES") or 5)}}

task_ignore_result = True  # outputs go to storage and progress to the Redis ledger
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

_queue = os.environ.get("FACEQ_QUEUE") or "faceq"
task_default_queue = _queue
task_queues = (Queue(_queue),)
task_routes = {"faceq.*": {"queue": _queue}}

# Events for Flower: task-sent from producers, task-received/started/succeeded from workers.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

worker_hijack_root_logger = True
worker_redirect_stdouts = False
