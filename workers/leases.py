"""Keep the messages this worker holds invisible to the others, and only while it lives.

Celery on Redis redelivers an unacknowledged message once its entry in kombu's
``unacked_index`` is older than the visibility timeout. We keep that timeout short (30 s) and
refresh the entries of every message this process has reserved, every few seconds: a chunk
may run for minutes, yet the messages of a worker killed with ``kill -9`` come back to the
queue within about a visibility timeout. (kombu has no lease-extension API; this writes the
same sorted set its ``QoS.append`` writes, with ``XX`` so it never re-adds an acked message.)
"""

from __future__ import annotations

import time

import redis
from celery.worker import state

from faceq.workers.periodic import Periodic


UNACKED_INDEX_KEY = "unacked_index"  # kombu's default ``unacked_index_key``


def held_delivery_tags() -> list[str]:
    """Delivery tags of the messages this worker has reserved (running or waiting to run)."""
    tags = []
    for request in list(state.reserved_requests):
        message = getattr(request, "message", None)
        if message is not None and message.delivery_tag:
            tags.append(message.delivery_tag)
    return tags


class LeaseKeeper(Periodic):
    """A daemon thread that renews the leases of held messages every ``interval`` seconds."""

    tolerated = (redis.RedisError,)  # the broker is down: messages cannot expire meanwhile either
    what = "renewing message leases"

    def __init__(self, client: redis.Redis, interval: float):
        super().__init__(interval, "faceq-leases")
        self.client = client

    def renew(self) -> int:
        tags = held_delivery_tags()
        if tags:
            now = time.time()
            self.client.zadd(UNACKED_INDEX_KEY, {tag: now for tag in tags}, xx=True)
        return len(tags)

    tick = renew
