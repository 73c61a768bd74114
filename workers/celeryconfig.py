"""Every Celery setting of faceq, in one place, read from the environment.

Delivery: at-least-once. A chunk is acknowledged only after its Parquet object is written and
recorded (``task_acks_late``). The visibility timeout is short (30 s): while a worker holds a
message it renews the message's lease (workers/leases.py), so only the messages of a worker
that died (kill -9, OOM, a lost node) come back, within about ``visibility_timeout`` +
``unacked_restore_interval`` seconds, to any live worker. Outputs have deterministic names and
chunks are recorded once, so a redelivered chunk never adds rows.

Prefetch: each worker reserves at most ``worker_prefetch_multiplier × concurrency`` messages.
With 1, a worker holds no chunk it is not working on, so an idle worker on another GPU can
take the next one (chunks are large: hoarding would serialise a job onto one GPU).
"""

import os

from kombu import Queue

broker_url = os.environ.get("FACEQ_BROKER_URL") or "redis://127.0.0.1:6379/0"
broker_connection_retry_on_startup = True
# Redis redelivers an unacknowledged message whose lease was not renewed for this many seconds;
# every live worker sweeps for such messages every ``unacked_restore_interval`` seconds.
VISIBILITY_TIMEOUT = int(os.environ.get("FACEQ_VISIBILITY_TIMEOUT") or 30)
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT,
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
}
broker_connection_max_retries = None  # a worker rides out any broker outage and reconnects
# A chunk running when the broker blips keeps running (its ledger writes retry); its message
# comes back after the visibility timeout and is skipped as already recorded.
worker_cancel_long_running_tasks_on_connection_loss = False
# Reconnects even when closing the dead connection raises something else than a connection error
# (kombu's Redis transport after a Redis restart: see workers/consumer.py).
worker_consumer = "faceq.workers.consumer:ReconnectingConsumer"

# json only: pickle would let anyone who can write to the broker run code on the workers.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

task_ignore_result = True  # outputs go to storage and progress to the Redis ledger
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

_queue = os.environ.get("FACEQ_QUEUE") or "faceq"
task_default_queue = _queue
task_queues = (Queue(_queue),)
task_routes = {"faceq.*": {"queue": _queue}}

# Events for Flower: task-received/started/succeeded from faceq.workers only. Producers send no
# task-sent events: each producer process would otherwise appear in Flower as a "gen<PID>@host"
# worker (and label on its /metrics), without bound. The cost: Flower lists a chunk only once a
# worker receives it; queued chunks are counted by the workers' faceq_queue_depth metric.
worker_send_task_events = True
task_send_sent_event = False
task_track_started = True

worker_hijack_root_logger = True
worker_redirect_stdouts = False
