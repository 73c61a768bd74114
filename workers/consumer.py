"""Celery's consumer with one seam made safe: closing the broker connection that just died.

When Redis restarts, the consumer drops the dead connection with
``ignore_errors(connection, connection.close)``, which swallows connection and channel errors
only. Closing a Redis connection can restore unacknowledged messages through a transport whose
``client`` is already None and raise ``AttributeError`` (celery/kombu#582, celery/celery#10205):
it escaped to the worker's blueprint, which logged "Unrecoverable error" and stopped consuming
for good while the process lived on. Here whatever that one close raises is logged, and the
consumer goes on to reconnect, as it does after every other connection error. Any other
unrecoverable error still ends the worker, with a non-zero exit (``faceq.workers.__main__``).
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)


class ReconnectingConsumer(Consumer):
    def on_connection_error_after_connected(self, exc):
        connection = self.connection
        if connection is not None:
            close = connection.close

            def close_whatever_it_raises():
                try:
                    close()
                except Exception as error:  # the connection is gone either way; reconnecting is what matters
                    log.warning("closing the broken broker connection raised %r; reconnecting anyway", error)

            connection.close = close_whatever_it_raises  # this instance only: Celery calls it once, below
        super().on_connection_error_after_connected(exc)
