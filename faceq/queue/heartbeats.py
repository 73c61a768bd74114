"""Where workers publish their health in Redis, and how to read it (no torch needed).

``faceq:worker:<name>`` holds a JSON status and expires unless the worker refreshes it.
"""

from __future__ import annotations

import json

import redis

KEY_PREFIX = "faceq:worker:"


def heartbeat_key(worker: str) -> str:
    return f"{KEY_PREFIX}{worker}"


def read_heartbeats(client: redis.Redis) -> list[dict]:
    keys = sorted(client.scan_iter(f"{KEY_PREFIX}*"))
    return [json.loads(raw) for raw in client.mget(keys) if raw] if keys else []
