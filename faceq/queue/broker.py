"""The broker URL checked before use, so that a wrong ``FACEQ_BROKER_URL`` is one line, early.

redis-py reports a URL with another scheme (``http://…``) as a ``ValueError`` from deep inside
``from_url``, and a database number the server does not have (``redis://…/99``) only at the
first command, as ``ResponseError: DB index is out of range``: both reached people as long
tracebacks, a worker's only after loading its model. ``check_broker_url`` catches the first
from the text alone; ``broker_problem`` turns what a first command raised into a sentence;
``ping_broker`` does both with one round trip (producers before submitting, workers before
loading the model).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import redis

from faceq.errors import ConfigError
from faceq.redact import redact_url
from faceq.retry import REDIS_ERRORS

SCHEMES = ("redis", "rediss", "unix")


def check_broker_url(url: str) -> None:
    """Raise ``ConfigError`` unless ``url`` is a Redis URL redis-py can open (scheme, database number)."""
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES:
        raise ConfigError(f"FACEQ_BROKER_URL={redact_url(url)}: a Redis URL starts with redis://, rediss:// or "
                          f"unix:// (e.g. redis://127.0.0.1:6379/0)")
    database = (parsed.path.strip("/") if parsed.scheme != "unix" else "") or \
        (parse_qs(parsed.query).get("db") or [""])[0]
    if database and not database.isdigit():
        raise ConfigError(f"FACEQ_BROKER_URL={redact_url(url)}: the database after the port is a number "
                          f"(e.g. redis://127.0.0.1:6379/0), not {database!r}")
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"FACEQ_BROKER_URL={redact_url(url)}: {exc}") from None


def broker_problem(exc: BaseException, url: str) -> str | None:
    """One line for what a broker command raised; None for an error that is not about the broker."""
    where = redact_url(url)
    text = str(exc)
    if isinstance(exc, redis.exceptions.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return f"the broker at {where} refused the credentials: check the user and password in FACEQ_BROKER_URL"
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index is out of range" in text:
        return (f"the broker at {where} has no database {urlparse(url).path.strip('/')!s}: Redis has 16 "
                f"(0-15) unless configured otherwise; use e.g. redis://host:6379/0 in FACEQ_BROKER_URL")
    if isinstance(exc, REDIS_ERRORS):
        return (f"the broker at {where} does not answer ({type(exc).__name__}); check FACEQ_BROKER_URL and "
                f"that Redis runs")
    if isinstance(exc, redis.RedisError):
        return f"the broker at {where} answered with an error: {type(exc).__name__}: {text[:200]}"
    return None


def is_unreachable(exc: BaseException) -> bool:
    """A broker that is down or slow (worth waiting for), not one that refuses us for good."""
    return isinstance(exc, REDIS_ERRORS) and not isinstance(exc, redis.exceptions.AuthenticationError)


def ping_broker(url: str, timeout: float = 5.0) -> None:
    """One PING (which also selects the database): ``ConfigError`` with one line if it fails."""
    check_broker_url(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        error = ConfigError(broker_problem(exc, url))
        error.unreachable = is_unreachable(exc)
        raise error from None
    finally:
        client.close()
