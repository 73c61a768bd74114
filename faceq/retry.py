"""Riding out infrastructure outages: retry transient failures for a window of time.

Storage and Redis outages of minutes are routine at night. Callers keep their state (rows
already computed stay in memory) while a call is retried with capped exponential backoff and
full jitter (tenacity), and give up only after the configured window.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import redis
import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
                redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError)


def retry_call(call: Callable[[], T], what: str, window_seconds: float, transient: Callable[[BaseException], bool],
               max_wait_seconds: float = 15.0, on_retry: Callable[[object], None] | None = None) -> T:
    """``call()``, retried while it raises a transient error and the window lasts; the last
    error is re-raised when it does not. ``on_retry`` replaces the warning logged before each wait."""
    if window_seconds <= 0:
        return call()
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(window_seconds),
        wait=tenacity.wait_random_exponential(multiplier=0.25, max=max_wait_seconds),
        retry=tenacity.retry_if_exception(transient),
        reraise=True,
        before_sleep=on_retry or (lambda state: log.warning("%s failed (%s); retrying for up to %.0fs", what,
                                                            _short(state.outcome.exception()), window_seconds)),
    )
    return retrying(call)


def redis_retry(call: Callable[[], T], what: str, window_seconds: float) -> T:
    """``call()`` retried through a Redis outage (a restart, a failover)."""
    return retry_call(call, what, window_seconds, lambda exc: isinstance(exc, REDIS_ERRORS))


def _short(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 200 else text[:200] + "…"
