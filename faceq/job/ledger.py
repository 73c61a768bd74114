"""Job bookkeeping in Redis: a fast index of progress that can always be rebuilt from storage.

``faceq:jobs`` (sorted set: job id → created_at) lists recent jobs. Per job, keys under
``faceq:job:<id>``, expiring ``retention_seconds`` after the last write:
  ``…``            hash: run_id, kind, n_chunks, n_items, created_at, state (running | done |
                   cancelled), finished_at and
                   counters items_done, rows, errors, flagged (each chunk counted once)
  ``…:chunks``     hash: chunk index → JSON stats of the finished chunk (idempotent on redelivery)
  ``…:partial``    hash: chunk index → items of a running chunk with results so far (overwritten,
                   never added to: a redelivered chunk restarts its own count; dropped when the
                   chunk is recorded, so each item is counted once)
  ``…:failed``     hash: chunk index → why a chunk gave up (or ``finalize`` → why finalize did)
  ``…:deliveries`` hash: chunk index → how often a worker started it (poison-chunk guard)
  ``…:finalize``   lease of the one worker writing the summary (renewed while it works)

A re-run of the same job id gets a new ``run_id``; messages of an older run are recognised
as stale and dropped. Nothing here is the only copy: parts and headers are in storage, and
``restore`` rebuilds a lost job's keys from them (``producer resume``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from enum import Enum

import redis

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
JOBS_INDEX_KEY = "faceq:jobs"
_SUFFIXES = ("", ":chunks", ":failed", ":deliveries", ":finalize", ":partial")

# KEYS: meta, chunks, failed, partial  ARGV: run_id, index, stats json, n_items, n_rows, n_errors, n_flagged, ttl, now
_RECORD_CHUNK = """
if redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[1] then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[9])
  redis.call('HINCRBY', KEYS[1], 'items_done', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'rows', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'errors', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'flagged', ARGV[7])
end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[8]) end
if redis.call('HLEN', KEYS[2]) >= tonumber(redis.call('HGET', KEYS[1], 'n_chunks')) then return 1 end
return 0
"""
# KEYS: meta, chunks, partial  ARGV: run_id, index, items done, ttl
# (a late report of a chunk already recorded, or of an older run, is ignored)
_CHUNK_PROGRESS = """
if redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def items_done(recorded: str | int | None, partial: list, n_items: str | int | None) -> int:
    """Items with results: of recorded chunks plus the running chunks' counts (the ``…:partial``
    values), never above the job's total. One rule for `faceq status` and the metrics."""
    return min(int(recorded or 0) + sum(map(int, partial)), int(n_items or 0))


class ChunkRecord(Enum):
    STALE = -1  # the chunk belongs to an older run of this job id (or to a job Redis forgot)
    PENDING = 0  # other chunks are still outstanding
    COMPLETE = 1  # every chunk of the run is done


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    run_id: str
    kind: str
    state: str  # running | done | failed
    n_chunks: int
    n_items: int
    chunks_done: int
    items_done: int  # of recorded chunks, plus the items of running chunks with results so far
    errors: int
    flagged: int
    failed: dict[str, str]  # chunk index (or "finalize") → reason
    created_at: float
    finished_at: float | None
    updated_at: float | None = None  # when a chunk was last recorded (None: none yet)
    hidden: bool = False  # a one-off call (client.compare / verify): listings skip it unless asked

    @property
    def last_activity(self) -> float:
        """When the job last moved: its last recorded chunk, else its creation."""
        return self.updated_at or self.created_at

    @property
    def complete(self) -> bool:
        return self.state == "done"

    @property
    def cancelled(self) -> bool:
        return self.state == "cancelled"

    @property
    def chunks_pending(self) -> int:
        return self.n_chunks - self.chunks_done

    @property
    def cannot_complete(self) -> bool:
        """Every chunk finished or gave up, and some gave up (or finalize did)."""
        return bool(self.failed) and (self.chunks_done + len(self.failed) >= self.n_chunks
                                      or "finalize" in self.failed)


class Lease:
    """A Redis key held by one owner (a random token) that expires unless renewed."""

    def __init__(self, ledger: "Ledger", key: str, token: str, seconds: int):
        self.ledger, self.key, self.token, self.seconds = ledger, key, token, seconds

    def renew(self) -> bool:
        return bool(self.ledger._renew_lease(keys=[self.key], args=[self.token, self.seconds]))

    def release(self) -> None:
        self.ledger._release_lease(keys=[self.key], args=[self.token])


class Ledger:
    def __init__(self, client: redis.Redis, retention_seconds: int = DEFAULT_RETENTION_SECONDS):
        self.redis = client
        self.retention_seconds = retention_seconds
        self._record_chunk = client.register_script(_RECORD_CHUNK)
        self._chunk_progress = client.register_script(_CHUNK_PROGRESS)
        self._renew_lease = client.register_script(_RENEW_LEASE)
        self._release_lease = client.register_script(_RELEASE_LEASE)

    @classmethod
    def from_url(cls, url: str, retention_seconds: int = DEFAULT_RETENTION_SECONDS) -> "Ledger":
        # bounded socket timeouts: a hung broker becomes an error that callers retry, not a hang
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30,
                                      health_check_interval=30)
        return cls(client, retention_seconds)

    @staticmethod
    def _key(job_id: str, suffix: str = "") -> str:
        return f"faceq:job:{job_id}{suffix}"

    def start(self, job_id: str, run_id: str, kind: str, n_chunks: int, n_items: int,
              created_at: float | None = None, hidden: bool = False) -> None:
        """Register a (re-)run of ``job_id``; forgets any earlier run's progress. ``hidden``: a
        one-off call that ``recent_jobs`` lists only when asked."""
        created = created_at or time.time()
        pipe = self.redis.pipeline(transaction=True)
        for suffix in _SUFFIXES:
            pipe.delete(self._key(job_id, suffix))
        pipe.hset(self._key(job_id), mapping={
            "run_id": run_id, "kind": kind, "n_chunks": n_chunks, "n_items": n_items,
            "created_at": created, "state": "running",
            "items_done": 0, "rows": 0, "errors": 0, "flagged": 0, **({"hidden": 1} if hidden else {}),
        })
        pipe.expire(self._key(job_id), self.retention_seconds)
        pipe.zadd(JOBS_INDEX_KEY, {job_id: created})
        pipe.zremrangebyscore(JOBS_INDEX_KEY, 0, time.time() - self.retention_seconds)
        pipe.execute()

    def recent_jobs(self, limit: int = 20, include_hidden: bool = True) -> list[JobProgress]:
        """The most recently created jobs Redis still knows, newest first (without hidden
        one-off calls unless ``include_hidden``)."""
        found: list[JobProgress] = []
        start, page = 0, max(limit, 1)
        while len(found) < limit:
            ids = self.redis.zrevrange(JOBS_INDEX_KEY, start, start + page - 1)
            if not ids:
                break
            found += [p for p in map(self.progress, ids) if p is not None and (include_hidden or not p.hidden)]
            start += page
        return found[:max(limit, 1)]

    def cancel(self, job_id: str) -> bool:
        """Mark a running job cancelled: workers drop its queued chunks. False if not running."""
        script = ("if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end "
                  "redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1]) return 1")
        return bool(self.redis.eval(script, 1, self._key(job_id), time.time()))

    def record_chunk(self, job_id: str, run_id: str, index: int, stats: dict) -> ChunkRecord:
        keys = [self._key(job_id), self._key(job_id, ":chunks"), self._key(job_id, ":failed"),
                self._key(job_id, ":partial")]
        args = [run_id, index, json.dumps(stats), stats["n_items"], stats.get("n_rows", 0), stats.get("n_errors", 0),
                stats.get("n_flagged", 0), self.retention_seconds, time.time()]
        return ChunkRecord(int(self._record_chunk(keys=keys, args=args)))

    def chunk_progress(self, job_id: str, run_id: str, index: int, items_done: int) -> bool:
        """How many items of a running chunk have their results so far (its latest count
        replaces the previous one). False if the chunk is already recorded or the run is stale."""
        keys = [self._key(job_id), self._key(job_id, ":chunks"), self._key(job_id, ":partial")]
        return bool(self._chunk_progress(keys=keys, args=[run_id, index, items_done, self.retention_seconds]))

    def recorded_chunks(self, job_id: str) -> set[int]:
        """Indices of the chunks the ledger has recorded for the job's current run."""
        return {int(index) for index in self.redis.hkeys(self._key(job_id, ":chunks"))}

    def chunk_done(self, job_id: str, index: int) -> bool:
        return bool(self.redis.hexists(self._key(job_id, ":chunks"), index))

    def count_delivery(self, job_id: str, index: int) -> int:
        """How many times a worker has started this chunk, this one included."""
        key = self._key(job_id, ":deliveries")
        pipe = self.redis.pipeline()
        pipe.hincrby(key, index, 1)
        pipe.expire(key, self.retention_seconds)
        return int(pipe.execute()[0])

    def record_failure(self, job_id: str, run_id: str, index: int | str, message: str) -> None:
        """Why a chunk (or ``finalize``) gave up. A finalize that gave up fails the job: its state
        becomes ``failed`` (a resume starts it again), so waiters and metrics see it at once."""
        if self.is_current(job_id, run_id):
            pipe = self.redis.pipeline()
            pipe.hset(self._key(job_id, ":failed"), index, message)
            pipe.expire(self._key(job_id, ":failed"), self.retention_seconds)
            if index == "finalize":
                pipe.hset(self._key(job_id), mapping={"state": "failed", "finished_at": time.time()})
            pipe.execute()

    def run_id(self, job_id: str) -> str | None:
        return self.redis.hget(self._key(job_id), "run_id")

    def run_state(self, job_id: str) -> tuple[str | None, str | None]:
        """(run id, state) of the job's current run; (None, None) for a job Redis does not know."""
        run_id, state = self.redis.hmget(self._key(job_id), "run_id", "state")
        return run_id, state

    def is_current(self, job_id: str, run_id: str) -> bool:
        return self.run_id(job_id) == run_id

    def claim_finalize(self, job_id: str, run_id: str, lease_seconds: int) -> Lease | None:
        """A lease for exactly one caller at a time: that caller writes the job's summary. It
        expires ``lease_seconds`` after its holder stops renewing it (a dead worker)."""
        key = self._key(job_id, ":finalize")
        token = f"{run_id}:{uuid.uuid4().hex}"
        if self.redis.set(key, token, nx=True, ex=lease_seconds):
            return Lease(self, key, token, lease_seconds)
        return None

    def mark_done(self, job_id: str, run_id: str) -> None:
        if self.is_current(job_id, run_id):
            self.redis.hset(self._key(job_id), mapping={"state": "done", "finished_at": time.time()})

    def restore(self, job_id: str, run_id: str, kind: str, n_chunks: int, n_items: int, created_at: float,
                done: dict[int, int], hidden: bool = False) -> None:
        """Rebuild a job's keys from storage: ``done`` maps chunks that have parts to their item counts
        (``hidden``: a one-off call stays out of listings after a resume too)."""
        self.start(job_id, run_id, kind, n_chunks, n_items, created_at, hidden=hidden)
        for index, n in done.items():
            self.record_chunk(job_id, run_id, index, {"n_items": n, "restored": True})

    def chunk_stats(self, job_id: str) -> dict[int, dict]:
        raw = self.redis.hgetall(self._key(job_id, ":chunks"))
        return {int(k): json.loads(v) for k, v in raw.items()}

    def progress(self, job_id: str) -> JobProgress | None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self._key(job_id))
        pipe.hlen(self._key(job_id, ":chunks"))
        pipe.hgetall(self._key(job_id, ":failed"))
        pipe.hvals(self._key(job_id, ":partial"))
        meta, chunks_done, failed, partial = pipe.execute()
        if not meta:
            return None
        return JobProgress(
            job_id=job_id,
            run_id=meta["run_id"],
            kind=meta["kind"],
            state=meta["state"],
            n_chunks=int(meta["n_chunks"]),
            n_items=int(meta["n_items"]),
            chunks_done=int(chunks_done),
            items_done=items_done(meta.get("items_done"), partial, meta["n_items"]),
            errors=int(meta.get("errors", 0)),
            flagged=int(meta.get("flagged", 0)),
            failed=dict(failed),
            created_at=float(meta["created_at"]),
            finished_at=float(meta["finished_at"]) if meta.get("finished_at") else None,
            updated_at=float(meta["updated_at"]) if meta.get("updated_at") else None,
            hidden=bool(meta.get("hidden")),
        )
