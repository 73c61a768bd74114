"""Plan a job and enqueue it, in memory that does not grow with the job.

Order, so that storage is always the source of truth:
1. stream the items into per-chunk manifests (uploading local files for remote workers),
   ``chunk_size`` items at a time, a few chunks in flight;
2. write the run's header, then ``current.json`` (the plan is committed);
3. register the run in the Redis ledger and send one reference-only message per chunk.
A crash before 2 leaves an unreferenced run folder, never a half-planned job; a crash after
2 is repaired by ``resume``. An earlier run of the same job id stays readable until this run's
summary replaces it; its queued messages are dropped by the workers as stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

import numpy as np
from tqdm import tqdm

from faceq.job import spec as jobs
from faceq.errors import JobError
from faceq.gallery import GalleryStore, validate_gallery_name
from faceq.job.spec import Item, JobHeader
from faceq.job.ledger import Ledger
from faceq.job.manifest import chunk_manifest_bytes
from faceq.queue.messages import send_chunks, send_finalize
from faceq.settings import Settings
from faceq.storage.store import Storage
from faceq.producer.sources import LocalItem, stage_batch

log = logging.getLogger(__name__)

UPLOAD_THREADS = 16
CHUNKS_IN_FLIGHT = 4


def new_job_id(kind: str, one_off: bool = False) -> str:
    return (f"{jobs.ONE_OFF_PREFIX if one_off else ''}{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-"
            f"{uuid.uuid4().hex[:6]}")


@dataclass(frozen=True)
class JobOptions:
    kind: str
    mode: str = "crop"
    chunk_size: int | None = None
    all_faces: bool = False
    gallery: str | None = None
    top_k: int = 0
    baseline_job_id: str | None = None
    report: bool = True
    gallery_update: bool = False  # enroll: delta on the current version (faceq enroll --update)
    one_off: bool = False  # client.compare / verify: hidden from `faceq jobs` unless --all

    def validate(self) -> None:
        if self.kind not in jobs.JOB_KINDS:
            raise JobError(f"unknown job kind {self.kind!r}")
        if self.mode not in jobs.MODES:
            raise JobError(f"unknown mode {self.mode!r}; available: {', '.join(jobs.MODES)}")
        if self.all_faces and self.mode != "detect":
            raise JobError("--all-faces needs detect mode")
        if self.kind == "compare" and (self.all_faces or self.gallery):
            raise JobError("a compare job compares the largest face of each photo of a pair: no gallery, no --all-faces")
        if self.kind == "enroll" and not self.gallery:
            raise JobError("an enrolment job needs a gallery name")
        if self.gallery:
            validate_gallery_name(self.gallery)
        if self.chunk_size is not None and self.chunk_size < 1:
            raise JobError("the chunk size must be at least 1")


class ManifestWriter:
    """Writes chunk manifests as items stream in; holds at most a few chunks in memory.

    Unless the items come from a source that already guarantees unique ids (``check_ids``
    False: a directory walk, an S3 listing, a manifest read with its own line-numbered check),
    it keeps an 8-byte hash per item, sorted per chunk, to refuse repeated ids at the end.
    """

    def __init__(self, storage: Storage, job_id: str, run_id: str, chunk_size: int, progress: bool,
                 check_ids: bool = True):
        self.storage, self.job_id, self.run_id, self.chunk_size = storage, job_id, run_id, chunk_size
        self.columns: tuple[str, ...] | None = None
        self.n_items = 0
        self.check_ids = check_ids
        self._buffer: list[Item | LocalItem] = []
        self._hashes: list[np.ndarray] = []  # one sorted array per chunk
        self._pending: deque[Future] = deque()
        self._uploads = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="faceq-upload")
        self._writers = ThreadPoolExecutor(CHUNKS_IN_FLIGHT, thread_name_prefix="faceq-plan")
        self._bar = tqdm(desc=f"plan {job_id}", unit="item", disable=not progress)

    def add(self, item: Item | LocalItem) -> None:
        fields = tuple(item.fields)
        if self.columns is None:
            self.columns = fields
        elif fields != self.columns:
            raise JobError(f"item {item.item_id!r} has columns {fields}, the job's first item {self.columns}")
        self._buffer.append(item)
        if len(self._buffer) == self.chunk_size:
            self._flush()

    def _flush(self) -> None:
        index, batch = self.n_items // self.chunk_size, self._buffer
        self._buffer = []
        self.n_items += len(batch)
        if self.check_ids:
            self._hashes.append(np.sort(np.array([_id_hash(i.item_id) for i in batch], dtype=np.uint64)))
        while len(self._pending) >= CHUNKS_IN_FLIGHT:
            self._pending.popleft().result()
        self._pending.append(self._writers.submit(self._write, index, batch))
        self._bar.update(len(batch))

    def _write(self, index: int, batch: list[Item | LocalItem]) -> None:
        staged = stage_batch(batch, self.storage, jobs.inputs_prefix(self.job_id, self.run_id), self._uploads)
        self.storage.put_bytes(jobs.chunk_manifest_key(self.job_id, self.run_id, index),
                               chunk_manifest_bytes(staged, self.columns or ()))

    def finish(self) -> None:
        """Flush the last chunk, wait for every write, and refuse duplicate item ids."""
        try:
            if self._buffer:
                self._flush()
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._writers.shutdown(cancel_futures=True)
            self._uploads.shutdown(cancel_futures=True)
            self._bar.close()
        if self.n_items == 0:
            raise JobError("a job needs at least one item")
        duplicates = _repeated(self._hashes)
        if duplicates:
            raise JobError(f"item ids must be unique within a job: {duplicates} repeated")


def _id_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def _repeated(sorted_runs: list[np.ndarray], parts: int = 16) -> int:
    """How many hashes repeat one seen before, across sorted runs, without ever holding a
    second copy of them all: one range of hash values (1/``parts`` of them) at a time."""
    edges = np.arange(1, parts, dtype=np.uint64) * np.uint64(2**64 // parts)
    bounds = [np.concatenate(([0], np.searchsorted(run, edges), [len(run)])) for run in sorted_runs]
    repeated = 0
    for part in range(parts):
        values = np.concatenate([run[b[part]:b[part + 1]] for run, b in zip(sorted_runs, bounds)] or
                                [np.empty(0, np.uint64)])
        values.sort()
        repeated += int(np.count_nonzero(values[1:] == values[:-1]))
    return repeated


def write_plan(settings: Settings, storage: Storage, *, items: Iterable[Item | LocalItem], source: str, job_id: str,
               options: JobOptions, allowed_sources: tuple[str, ...] = (), progress: bool = False) -> JobHeader:
    """Steps 1 and 2: the chunk manifests, the header, then ``current.json`` (the commit)."""
    options.validate()
    jobs.validate_job_id(job_id)
    if options.one_off != jobs.is_one_off(job_id):
        raise JobError(f"job id {job_id!r}: ids starting with {jobs.ONE_OFF_PREFIX!r} are for one-off calls "
                       f"(client.compare / verify), which are stored apart under oneoff/; "
                       f"{'give it such an id' if options.one_off else 'choose another id'}")
    gallery_version = None
    if options.kind == "attendance" and options.gallery:  # fixed now: a later enrolment does not change this job
        gallery_version = GalleryStore(storage).current_version(options.gallery)
    run_id = uuid.uuid4().hex
    chunk_size = options.chunk_size or settings.chunk_size
    # the sources' iterators (faceq.producer.sources) have already refused repeated ids
    writer = ManifestWriter(storage, job_id, run_id, chunk_size, progress,
                            check_ids=not getattr(items, "unique_ids", False))
    for item in items:
        writer.add(item)
    writer.finish()
    header = JobHeader(
        job_id=job_id, run_id=run_id, kind=options.kind, mode=options.mode, source=source,
        created_at=datetime.now(timezone.utc).isoformat(), chunk_size=chunk_size, n_items=writer.n_items,
        columns=writer.columns or (), allowed_sources=allowed_sources, model_weights=settings.model_weights,
        all_faces=options.all_faces, gallery=options.gallery, gallery_version=gallery_version, top_k=options.top_k,
        baseline_job_id=options.baseline_job_id, report=options.report,
        gallery_update=options.gallery_update,
    )
    storage.put_bytes(jobs.header_key(job_id, run_id), header.to_json(), "application/json")
    storage.put_bytes(jobs.current_run_key(job_id), json.dumps({"run_id": run_id}).encode(), "application/json")
    return header


def submit(settings: Settings, storage: Storage, ledger: Ledger, *, items: Iterable[Item | LocalItem], source: str,
           job_id: str, options: JobOptions, allowed_sources: tuple[str, ...] = (),
           progress: bool = False) -> JobHeader:
    """Plan the job from ``items`` (any iterable, consumed once) and enqueue its chunks."""
    header = write_plan(settings, storage, items=items, source=source, job_id=job_id, options=options,
                        allowed_sources=allowed_sources, progress=progress)
    ledger.start(job_id, header.run_id, header.kind, header.n_chunks, header.n_items, hidden=jobs.is_one_off(job_id))
    enqueue(header, range(header.n_chunks), settings.broker_url)
    log.info("job %s: %d items in %d chunks enqueued", job_id, header.n_items, header.n_chunks)
    return header


def enqueue(header: JobHeader, indices: Iterable[int], broker_url: str | None = None) -> int:
    """One reference-only message per chunk (``faceq.queue.messages``: no Celery needed here)."""
    return send_chunks(header, indices, broker_url or Settings.from_env().broker_url)


def finalize_later(header: JobHeader, broker_url: str | None = None) -> None:
    send_finalize(header, broker_url or Settings.from_env().broker_url)
