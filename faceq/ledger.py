"""Job bookkeeping in Redis: which chunks are done, progress, failures, and one finalizer.

Keys (all under ``faceq:job:<id>``):
  ``…``            hash: run_id, kind, n_chunks, n_items, created_at, state, finished_at
  ``…:chunks``     hash: chunk index → JSON stats of the finished chunk (idempotent on redelivery)
  ``…:failed``     hash: chunk index → error message of a chunk that gave up
  ``…:finalize``   lease held by the one worker that writes summary.json and review.csv

A re-run of the same job id gets a new ``run_id``; messages of an older run are recognised
as stale and dropped, so they cannot add rows to the new run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import Enum

import redis

_RECORD_CHUNK = """
if redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[2])
if redis.call('HLEN', KEYS[2]) >= tonumber(redis.call('HGET', KEYS[1], 'n_chunks')) then return 1 end
return 0
"""


class ChunkRecord(Enum):
    STALE = -1  # the chunk belongs to an older run of this job id
    PENDING = 0  # other chunks are still outstanding
    COMPLETE = 1  # every chunk of the run is done


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    run_id: str
    kind: str
    state: str
    n_chunks: int
    n_items: int
    chunks_done: int
    items_done: int
    failed: dict[int, str]
    created_at: float
    finished_at: float | None

    @property
    def complete(self) -> bool:
        return self.state == "done"

    @property
    def chunks_pending(self) -> int:
        return self.n_chunks - self.chunks_done


class Ledger:
    def __init__(self, client: redis.Redis):
        self.redis = client
        self._record_chunk = client.register_script(_RECORD_CHUNK)

    @classmethod
    def from_url(cls, url: str) -> "Ledger":
        return cls(redis.Redis.from_url(url, decode_responses=True))

    @staticmethod
    def _key(job_id: str, suffix: str = "") -> str:
        return f"faceq:job:{job_id}{suffix}"

    def start(self, job_id: str, run_id: str, kind: str, n_chunks: int, n_items: int) -> None:
        """Register a (re-)run of ``job_id``; forgets any earlier run's progress."""
        pipe = self.redis.pipeline(transaction=True)
        for suffix in ("", ":chunks", ":failed", ":finalize"):
            pipe.delete(self._key(job_id, suffix))
        pipe.hset(
            self._key(job_id),
            mapping={
                "run_id": run_id,
                "kind": kind,
                "n_chunks": n_chunks,
                "n_items": n_items,
                "created_at": time.time(),
                "state": "running",
            },
        )
        pipe.execute()

    def record_chunk(self, job_id: str, run_id: str, index: int, stats: dict) -> ChunkRecord:
        keys = [self._key(job_id), self._key(job_id, ":chunks"), self._key(job_id, ":failed")]
        result = self._record_chunk(keys=keys, args=[run_id, index, json.dumps(stats)])
        return ChunkRecord(int(result))

    def record_failure(self, job_id: str, run_id: str, index: int, message: str) -> None:
        if self.redis.hget(self._key(job_id), "run_id") == run_id:
            self.redis.hset(self._key(job_id, ":failed"), index, message)

    def is_current(self, job_id: str, run_id: str) -> bool:
        return self.redis.hget(self._key(job_id), "run_id") == run_id

    def claim_finalize(self, job_id: str, run_id: str, lease_seconds: int) -> bool:
        """True for exactly one caller per lease: that caller writes the job's summary."""
        return bool(self.redis.set(self._key(job_id, ":finalize"), run_id, nx=True, ex=lease_seconds))

    def release_finalize(self, job_id: str) -> None:
        self.redis.delete(self._key(job_id, ":finalize"))

    def mark_done(self, job_id: str, run_id: str) -> None:
        if self.is_current(job_id, run_id):
            self.redis.hset(self._key(job_id), mapping={"state": "done", "finished_at": time.time()})

    def chunk_stats(self, job_id: str) -> dict[int, dict]:
        raw = self.redis.hgetall(self._key(job_id, ":chunks"))
        return {int(k): json.loads(v) for k, v in raw.items()}

    def progress(self, job_id: str) -> JobProgress | None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self._key(job_id))
        pipe.hvals(self._key(job_id, ":chunks"))
        pipe.hgetall(self._key(job_id, ":failed"))
        meta, chunk_values, failed = pipe.execute()
        if not meta:
            return None
        return JobProgress(
            job_id=job_id,
            run_id=meta["run_id"],
            kind=meta["kind"],
            state=meta["state"],
            n_chunks=int(meta["n_chunks"]),
            n_items=int(meta["n_items"]),
            chunks_done=len(chunk_values),
            items_done=sum(json.loads(v)["n_items"] for v in chunk_values),
            failed={int(k): v for k, v in failed.items()},
            created_at=float(meta["created_at"]),
            finished_at=float(meta["finished_at"]) if meta.get("finished_at") else None,
        )
