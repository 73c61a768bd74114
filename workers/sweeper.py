"""Finish jobs that stopped moving, from storage's point of view, without a person.

A Redis restart can lose what was in flight: a chunk message taken off the queue and not yet
recorded as unacknowledged (kombu moves it in two steps), a chunk whose part was written while
the ledger was down, a finalize that never ran. Storage is a job's source of truth, so every
``interval`` seconds one worker (the holder of a short sweep lease) looks at the running jobs
in which no chunk was recorded for ``stall_seconds`` and

- records the chunks that have a part but no ledger entry,
- sends again the chunks that have neither a part nor a message (queued or unacknowledged),
- sends the finalize of a run whose every chunk has its part, unless one holds its lease,
- marks done a run whose summary is already written.

Every action is idempotent: a chunk sent twice is skipped as already recorded, and a finalize
runs once under its lease. ``faceq resume`` stays for Redis without persistence, where the
job's state and queue are gone altogether.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field

import redis

from faceq.job import spec as jobs
from faceq.job.spec import JobHeader
from faceq.job.ledger import JOBS_INDEX_KEY, ChunkRecord, JobProgress, Ledger
from faceq.queue.messages import FINALIZE_JOB, PROCESS_CHUNK, send_chunks, send_finalize
from faceq.storage.store import Storage
from faceq.workers.periodic import Periodic

log = logging.getLogger(__name__)

SWEEP_LEASE_KEY = "faceq:sweeper"
KOMBU_PRIORITY_SEP, KOMBU_PRIORITY_STEPS, KOMBU_UNACKED_KEY = "\x06\x16", (0, 3, 6, 9), "unacked"
JOB_SCAN = 500  # the newest jobs of the ledger looked at
PAGE = 1000  # queue messages read per round trip


@dataclass
class SweepReport:
    """What one sweep did (for the log and the tests)."""

    recorded: dict[str, list[int]] = field(default_factory=dict)
    resent: dict[str, list[int]] = field(default_factory=dict)
    finalized: list[str] = field(default_factory=list)
    marked_done: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.recorded or self.resent or self.finalized or self.marked_done)


def queued_chunks(client: redis.Redis, queue: str) -> set[tuple]:
    """(task, args…) of every faceq message waiting in ``queue`` (every priority) or unacknowledged."""
    found: set[tuple | None] = set()
    for step in KOMBU_PRIORITY_STEPS:
        name = queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}"
        for start in range(0, client.llen(name), PAGE):
            found.update(_reference(_json(raw)) for raw in client.lrange(name, start, start + PAGE - 1))
    for _, raw in client.hscan_iter(KOMBU_UNACKED_KEY, count=PAGE):  # [message, exchange, routing key]
        entry = _json(raw)
        found.add(_reference(entry[0] if isinstance(entry, list) and entry else None))
    found.discard(None)
    return found


def _json(raw: str | bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _reference(message) -> tuple | None:
    """A kombu message → (task name, *args) for faceq's tasks, else None."""
    try:
        task = message["headers"]["task"]
        if task not in (PROCESS_CHUNK, FINALIZE_JOB):
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return (task, *json.loads(body)[0])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


class Sweeper(Periodic):
    """One sweep (``sweep``) is a plain call, testable without a worker; ``start`` runs it in a
    daemon thread every ``interval`` seconds, on one worker at a time."""

    what = "the sweep of stalled jobs"  # Redis or storage down: the next round tries again

    def __init__(self, ledger: Ledger, storage: Storage, queue: str, broker_url: str | None,
                 stall_seconds: float = 30.0, interval: float = 5.0):
        super().__init__(interval, "faceq-sweeper")
        self.ledger, self.storage, self.queue, self.broker_url = ledger, storage, queue, broker_url
        self.stall_seconds = stall_seconds
        self._looked_at: dict[str, float] = {}  # job → when it was last looked at (once per stall_seconds)

    def sweep(self, now: float | None = None) -> SweepReport:
        now = time.time() if now is None else now
        report = SweepReport()
        self._looked_at = {job: at for job, at in self._looked_at.items() if now - at < 10 * self.stall_seconds}
        candidates = [job_id for job_id in self._running_and_quiet(now)
                      if now - self._looked_at.get(job_id, 0.0) >= self.stall_seconds]
        stalled = [p for p in map(self.ledger.progress, candidates) if p is not None and p.state == "running"]
        if not stalled:
            return report
        messages: set[tuple] | None = None  # read once, only if some chunk has no part
        for progress in stalled:
            self._looked_at[progress.job_id] = now
            header = self._header(progress)
            if header is None:
                continue
            if self._summary_written(header):
                self.ledger.mark_done(header.job_id, header.run_id)
                report.marked_done.append(header.job_id)
                continue
            with_parts = self._chunks_with_parts(header)
            unrecorded = sorted(with_parts - self.ledger.recorded_chunks(header.job_id))
            complete = False
            for index in unrecorded:
                record = self.ledger.record_chunk(header.job_id, header.run_id, index,
                                                  {"n_items": header.chunk_items(index), "restored": True})
                complete = complete or record is ChunkRecord.COMPLETE
            if unrecorded:
                report.recorded[header.job_id] = unrecorded
            missing = [i for i in range(header.n_chunks) if i not in with_parts]
            if missing:
                if messages is None:
                    messages = queued_chunks(self.ledger.redis, self.queue)
                lost = [i for i in missing if (PROCESS_CHUNK, header.job_id, header.run_id, i) not in messages]
                if lost:
                    send_chunks(header, lost, self.broker_url, self.queue)
                    report.resent[header.job_id] = lost
            elif complete or not self.ledger.redis.exists(Ledger._key(header.job_id, ":finalize")):
                send_finalize(header, self.broker_url, self.queue)
                report.finalized.append(header.job_id)
        if report:
            log.warning("sweeper: finished stalled jobs from storage: %s", report)
        return report

    def _running_and_quiet(self, now: float) -> list[str]:
        """Running jobs among the newest JOB_SCAN with no chunk recorded for ``stall_seconds``
        (one ZREVRANGE and one pipelined HMGET per sweep, whatever the jobs)."""
        ids = self.ledger.redis.zrevrange(JOBS_INDEX_KEY, 0, JOB_SCAN - 1)
        pipe = self.ledger.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(Ledger._key(job_id), "state", "updated_at", "created_at")
        quiet = []
        for job_id, (state, updated_at, created_at) in zip(ids, pipe.execute()):
            last = float(updated_at or created_at or now)
            if state == "running" and now - last >= self.stall_seconds:
                quiet.append(job_id)
        return quiet

    def _header(self, progress: JobProgress) -> JobHeader | None:
        try:
            return JobHeader.from_json(self.storage.get_bytes(jobs.header_key(progress.job_id, progress.run_id)))
        except Exception as exc:  # a plan that cannot be read: its chunks fail on their own, with the reason
            log.warning("sweeper: job %s has no readable plan (%s)", progress.job_id, exc)
            return None

    def _summary_written(self, header: JobHeader) -> bool:
        key = jobs.summary_key(header.job_id)
        if not self.storage.exists(key):
            return False
        return json.loads(self.storage.get_bytes(key)).get("run_id") == header.run_id

    def _chunks_with_parts(self, header: JobHeader) -> set[int]:
        keys = self.storage.list_keys(jobs.results_prefix(header.job_id, header.run_id))
        return {i for key in keys if (i := jobs.part_index(key)) is not None and i < header.n_chunks}

    def tick(self) -> None:
        # one sweeper at a time across the workers; the lease lapses with the interval
        if self.ledger.redis.set(SWEEP_LEASE_KEY, "1", nx=True, px=int(self.interval * 1000)):
            self.sweep()
