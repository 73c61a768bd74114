"""Faults injected into a real worker process, for tests/test_redis_restarts.py only.

Put this folder first on a worker's PYTHONPATH with one of:

FACEQ_TEST_FAULT=close-raises: kombu before its fix. Closing a broker connection while Redis is
    down raises AttributeError ("'NoneType' object has no attribute 'hostname'"), as kombu's
    Redis transport did when it restored unacknowledged messages through a closed transport.
FACEQ_TEST_FAULT=reconnect-fails: the consumer's reconnection after a broker loss raises an
    error that is not a connection error: the worker truly cannot go on consuming.
"""

import os
import socket

_FAULT = os.environ.get("FACEQ_TEST_FAULT")


def _broker_down() -> bool:
    from urllib.parse import urlparse

    url = urlparse(os.environ["FACEQ_BROKER_URL"])
    try:
        socket.create_connection((url.hostname, url.port or 6379), timeout=0.5).close()
        return False
    except OSError:
        return True


if _FAULT == "close-raises":
    import kombu.connection

    _release = kombu.connection.Connection.release

    def _release_like_old_kombu(self):
        _release(self)
        if _broker_down():
            raise AttributeError("'NoneType' object has no attribute 'hostname'")

    kombu.connection.Connection.release = kombu.connection.Connection.close = _release_like_old_kombu

elif _FAULT == "reconnect-fails":
    from celery.worker.consumer import consumer

    _connect = consumer.Consumer.connect
    _connected = []

    def _connect_once(self):
        if _connected:
            raise RuntimeError("injected: the consumer cannot reconnect")
        _connected.append(True)
        return _connect(self)

    consumer.Consumer.connect = _connect_once
