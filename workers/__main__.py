"""``python -m faceq.workers --device cpu|cuda:N [--concurrency K]``: one Celery worker per device."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m faceq.workers", description=__doc__)
    parser.add_argument("--device", default=os.environ.get("FACEQ_DEVICE", "cpu"), help="cpu or cuda:N")
    parser.add_argument(
        "--concurrency", type=int, default=None,
        help="chunk tasks in flight, sharing the one warm model (default: 4 on a GPU, 3 on the CPU)"
    )
    parser.add_argument("--queue", default=None, help="queue to consume (default FACEQ_QUEUE or 'faceq')")
    parser.add_argument("--hostname", default=None, help="worker name shown in Flower")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)

    # The device is fixed before the app (and torch) is imported; CUDA starts in this process.
    os.environ["FACEQ_DEVICE"] = args.device
    from faceq.settings import default_concurrency

    # prefetch 1: no more chunks are reserved than are in flight
    concurrency = args.concurrency or default_concurrency(args.device)
    if args.queue:
        os.environ["FACEQ_QUEUE"] = args.queue
    from celery.utils.nodenames import host_format

    from faceq.errors import FaceqError
    from faceq.redact import install_log_redaction
    from faceq.workers.app import app
    from faceq.workers.runtime import get_runtime

    hostname = host_format(args.hostname or f"faceq-{args.device.replace(':', '')}@%h")
    logging.basicConfig(level=args.loglevel, format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    install_log_redaction()
    _check_broker(app.conf.broker_url)
    try:  # load and warm the model before connecting: a worker that cannot serve never starts
        get_runtime(hostname)
    except FaceqError as exc:
        print(f"error: faceq worker cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    unrecoverable = _watch_for_unrecoverable_errors()
    try:
        code = _run_worker(app, concurrency, hostname, args.loglevel)
    except SystemExit as exc:
        code = exc.code
    if unrecoverable:
        # Celery has stopped consuming for good: exit non-zero so that systemd's
        # Restart=on-failure, compose's restart policy or Kubernetes starts a new worker
        print(f"error: faceq worker {hostname} stopped consuming after an unrecoverable error "
              f"({unrecoverable[0]}); exiting 1 so that its supervisor restarts it", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


def _check_broker(url: str) -> None:
    """One PING before the model loads: a broker URL that can never work (another scheme, a
    database Redis does not have, refused credentials) stops the worker in one line, exit 2. A
    broker that is only down yet is waited for, as before (Celery retries on startup)."""
    from faceq.queue.broker import ping_broker
    from faceq.errors import ConfigError

    try:
        ping_broker(url)
    except ConfigError as exc:
        if not getattr(exc, "unreachable", False):
            print(f"error: faceq worker cannot start: {exc}", file=sys.stderr)
            sys.exit(2)
        logging.getLogger("workers").warning("%s; loading the model meanwhile (Celery keeps trying)", exc)


class _Unrecoverable(logging.Handler):
    """Notes Celery's "Unrecoverable error" (its worker then stops, possibly with exit code 0)."""

    def __init__(self, seen: list[str]):
        super().__init__(logging.CRITICAL)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Unrecoverable error"):
            self.seen.append(record.getMessage()[len("Unrecoverable error: "):][:200])


def _watch_for_unrecoverable_errors() -> list[str]:
    from celery.worker import worker

    seen: list[str] = []
    worker.logger.addHandler(_Unrecoverable(seen))  # the logger WorkController.start reports it on
    return seen


def _run_worker(app, concurrency: int, hostname: str, loglevel: str) -> int:
    """Celery's worker; → its exit code. (``app.worker_main`` drops the code that ``app.start``
    returns: a worker that stopped after an unrecoverable error exited 0.)"""
    return app.start(
        [
            "worker",
            # threads, even for one task at a time: the main thread stays free to answer
            # pings, Flower and broker heartbeats while a chunk runs; nothing forks after CUDA
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--hostname={hostname}",
            f"--loglevel={loglevel}",
            f"--queues={app.conf.task_default_queue}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
