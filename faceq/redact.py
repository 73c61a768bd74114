"""Keep secrets out of messages and logs: credentials in URLs and secret env values become ``***``.

Broker and storage URLs carry passwords (``redis://:pw@host``); exceptions and CLI
messages quote those URLs. Everything faceq prints or logs goes through ``redact_text``
(directly, or through ``RedactingFilter`` on the logging handlers).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Iterable, Mapping

MASK = "***"
SECRET_NAME_PARTS = ("SECRET", "PASSWORD", "PASSWD", "TOKEN", "KEY", "CREDENTIAL")
MIN_SECRET_CHARS = 8  # shorter env values ("1", "true", "testing") would mask ordinary words

# scheme://userinfo@ — greedy up to the authority's last "@" (unencoded "@" in passwords happen)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@]*(?:@[^\s/?#@]*)*)@")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&;\s#]*(?:password|passwd|pwd|secret|token|key|signature|credential|auth)[^=&;\s#]*=)"
    r"(?P<value>[^&;\s#]*)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` with its user-info (``user:password``) and secret query values replaced by ``***``."""
    return redact_text(url, secrets=())


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every URL's credentials masked, and every literal secret value masked.

    ``secrets`` defaults to the values of environment variables whose names look secret
    (``env_secrets()``); pass ``()`` to mask URLs only.
    """
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@" if m.group("userinfo") else m.group(0), text)
    text = _SECRET_QUERY.sub(lambda m: m.group("name") + MASK if m.group("value") else m.group(0), text)
    for secret in env_secrets() if secrets is None else secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def env_secrets(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Values of variables named like secrets (``*SECRET*``, ``*PASSWORD*``, ``*TOKEN*``, ``*KEY*``…),
    longest first so that a secret containing another is masked whole."""
    env = os.environ if environ is None else environ
    values = {
        value for name, value in env.items()
        if any(part in name.upper() for part in SECRET_NAME_PARTS) and len(value) >= MIN_SECRET_CHARS
    }
    return tuple(sorted(values, key=len, reverse=True))


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message, arguments, traceback and stack before any
    handler formats it. Never drops a record."""

    def __init__(self, secrets: Iterable[str] | None = None):
        super().__init__()
        self.secrets = env_secrets() if secrets is None else tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        clean = redact_text(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Add one ``RedactingFilter`` to ``logger`` (default: root) and each of its handlers.

    Handler filters see records propagated from every child logger; call this after logging
    is configured (handlers added later, e.g. by Celery's own setup, need it again).
    Idempotent: a handler that already has a RedactingFilter keeps it.
    """
    target = logger or logging.getLogger()
    existing = next((f for f in target.filters if isinstance(f, RedactingFilter)), None)
    redactor = existing or RedactingFilter()
    if existing is None:
        target.addFilter(redactor)
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redactor)
    return redactor
