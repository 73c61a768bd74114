"""faceq.redact: credentials in URLs and secret env values never reach a message or a log line."""

from __future__ import annotations

import io
import logging

import pytest

from faceq.redact import RedactingFilter, env_secrets, install_log_redaction, redact_text, redact_url


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://:S3cretPW@host:6379/0", "redis://***@host:6379/0"),
        ("rediss://user:pw@h", "rediss://***@h"),
        ("rediss://user:pw@h:6380/1?ssl_cert_reqs=required", "rediss://***@h:6380/1?ssl_cert_reqs=required"),
        ("amqp://u:p@h/vhost", "amqp://***@h/vhost"),
        ("redis://:p@ss@host/0", "redis://***@host/0"),  # unencoded "@" in a password
        ("redis://:p%40ss@host/0", "redis://***@host/0"),
        ("https://ghp_token@github.com/x", "https://***@github.com/x"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("s3://bucket/key@2x.jpg", "s3://bucket/key@2x.jpg"),  # "@" after the authority is a key
        ("file:///data/a@b.jpg", "file:///data/a@b.jpg"),
        ("https://h/o?X-Amz-Signature=abc123&x=1", "https://h/o?X-Amz-Signature=***&x=1"),
        ("https://h/o?password=hunter2", "https://h/o?password=***"),
        ("https://h/o?page=2", "https://h/o?page=2"),
    ],
)
def test_redact_url_masks_credentials_only(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no job 'j1' on redis://:S3cretPW@10.0.0.5:6379/0",
        "warning: no faceq worker answers on redis://:S3cretPW@redis:6379/0; the job waits",
        "broker redis://:S3cretPW@a:1/0, backend rediss://faceq:S3cretPW@b:2/0.",
        "Error connecting to 'redis://:S3cretPW@a:1/0'\nretrying",
        "(redis://:S3cretPW@a)",
    ],
)
def test_redact_text_masks_every_url_in_free_text(text):
    clean = redact_text(text, secrets=())
    assert "S3cretPW" not in clean
    assert "***@" in clean


def test_redact_text_keeps_ordinary_text_and_addresses():
    text = "mail ops@example.com about photo 12@2x.jpg at 10:00, see s3://b/k"
    assert redact_text(text, secrets=()) == text


def test_secret_environment_values_are_masked_where_they_appear(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCY")
    monkeypatch.setenv("FACEQ_SIGNING_TOKEN", "tok-0123456789")
    monkeypatch.setenv("SHORT_PASSWORD", "abc")  # too short to mask safely
    monkeypatch.setenv("FACEQ_STORAGE_URL", "s3://bucket-named-like-this/p")  # not a secret name
    text = ("auth failed for wJalrXUtnFEMI/K7MDENG/bPxRfiCY with tok-0123456789; "
            "abc; s3://bucket-named-like-this/p")
    clean = redact_text(text)
    assert "wJalrXUtnFEMI" not in clean and "tok-0123456789" not in clean
    assert "abc;" in clean and "s3://bucket-named-like-this/p" in clean
    assert "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" in env_secrets()


def test_env_secrets_reads_a_given_mapping_longest_first():
    env = {"A_KEY": "12345678", "B_SECRET": "1234567890", "PATH": "/usr/bin:/bin", "C_TOKEN": "x"}
    assert env_secrets(env) == ("1234567890", "12345678")


def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, out


def test_redacting_filter_masks_messages_arguments_and_tracebacks():
    logger, out = _logger("faceq.test.redact.filter")
    logger.handlers[0].addFilter(RedactingFilter(secrets=["hunter2-hunter2"]))
    logger.info("connecting to %s", "redis://:S3cretPW@h:6379/0")
    logger.info("literal redis://u:S3cretPW@h and hunter2-hunter2")
    try:
        raise ConnectionError("cannot reach redis://:S3cretPW@h:6379/0")
    except ConnectionError:
        logger.exception("broker down")
    text = out.getvalue()
    assert "S3cretPW" not in text and "hunter2-hunter2" not in text
    assert "INFO connecting to redis://***@h:6379/0" in text
    assert "ConnectionError: cannot reach redis://***@h:6379/0" in text and "broker down" in text


def test_redacting_filter_never_drops_records_even_with_bad_format_args():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("not-a-number",), None)
    assert RedactingFilter(secrets=()).filter(record) is True


def test_install_log_redaction_covers_every_handler_once():
    logger, out = _logger("faceq.test.redact.install")
    second = io.StringIO()
    logger.addHandler(logging.StreamHandler(second))
    first_filter = install_log_redaction(logger)
    assert install_log_redaction(logger) is first_filter
    assert all(sum(isinstance(f, RedactingFilter) for f in h.filters) == 1 for h in logger.handlers)
    logging.getLogger("faceq.test.redact.install").warning("on redis://:S3cretPW@h/0")
    assert "S3cretPW" not in out.getvalue() + second.getvalue()
    assert "redis://***@h/0" in second.getvalue()


def test_child_logger_records_are_redacted_by_the_parent_handlers():
    parent, out = _logger("faceq.test.redact.parent")
    install_log_redaction(parent)
    logging.getLogger("faceq.test.redact.parent.child").warning("on %s", "amqp://u:S3cretPW@h")
    assert "S3cretPW" not in out.getvalue() and "amqp://***@h" in out.getvalue()
