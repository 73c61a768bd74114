"""Chunk processing and job finalization as plain Python services (no Celery here).

``ChunkProcessor.process`` turns one chunk reference into one Parquet part: it reads the
chunk's manifest from storage, fetches + decodes + crops in a thread pool (I/O and
Pillow/OpenCV release the GIL), passes the good crops through the engine, and writes an
``error`` row for every item that failed — a bad item never fails its chunk.

Faults it rides out: storage outages (retried for ``storage_retry_seconds`` with the rows
kept in memory), Redis outages (``redis_retry_seconds``), redeliveries (a recorded chunk is
skipped; a part is rewritten under the same name), poison chunks (recorded as failed after
``max_deliveries`` starts) and items that never finish reading (``item_timeout_seconds``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Callable

import numpy as np
from redis.exceptions import LockError

from faceq.job import spec as jobs
from faceq.storage.allow import AllowedSources
from faceq.errors import BadInputError, ModelError, StorageError
from faceq.gallery import GalleryStore
from faceq.job.spec import ChunkRef, Item, JobHeader
from faceq.job.ledger import ChunkRecord, Ledger
from faceq.job.manifest import read_chunk_manifest
from faceq.outputs.results import SECOND_IMAGE_FIELD, ItemResult, chunk_part_bytes
from faceq.retry import REDIS_ERRORS, redis_retry
from faceq.settings import Settings, TrustThresholds
from faceq.storage.store import Storage
from faceq.outputs.summary import finalize
from faceq.models.coarse_detect import CoarseToFineDetector, StageSeconds
from faceq.models.decisions import compare_pair, review_reasons, verify
from faceq.models.detect import FaceDetector
from faceq.models.preprocess import PreparedImage, crop_face, decode_image, detect_faces, image_size
from faceq.models.rts import INPUT_SIZE
from faceq.workers.batcher import MicroBatcher
from faceq.workers.chunk_progress import DEFAULT_EVERY, MODEL_SLICE, ChunkProgress, infer_in_slices
from faceq.workers.crop_pool import CropPool, SharedBatch
from faceq.workers.device_stage import build_device_stage
from faceq.workers.engine import Engine
from faceq.workers.galleries import GalleryCache
from faceq.workers.metrics import NULL_METRICS, NullMetrics
from faceq.workers.pixel_budget import PixelBudget
from faceq.workers.stage_cpu import StageCPU, clock

log = logging.getLogger(__name__)

FINALIZE_LEASE_SECONDS = 30  # renewed every third of this while finalize runs


def usable_cores() -> int:
    """Cores this process may run on (``taskset`` and cgroup cpusets count), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class FinalizeOutcome(Enum):
    WRITTEN = "written"
    ALREADY_DONE = "already_done"
    BUSY = "busy"  # another live worker holds the lease: it will write the summary
    STALE = "stale"


@dataclass(frozen=True)
class ChunkOutcome:
    record: ChunkRecord
    n_items: int
    n_errors: int
    n_flagged: int
    seconds: float
    skipped: bool = False  # already recorded by an earlier delivery: nothing was recomputed


def no_detector_message(job_id: str) -> str:
    """A detect chunk reached a worker started for crop only: what would let it run."""
    return (f"job {job_id} asks for detect mode but this worker has no face detector (it serves crop mode only): "
            f"start a worker with the YuNet detector (`faceq models fetch --only detector` on its host, then start "
            f"it with FACEQ_MODES=crop,detect), or submit the job again with --mode crop if its photos are already "
            f"cropped to the face")


class GaveUp(Exception):
    """A chunk that must not be tried again (poison chunk); the message says why."""


class HeaderCache:
    """Job headers read from storage, a few runs at a time (every chunk of a run shares one)."""

    def __init__(self, storage: Storage, capacity: int = 64):
        self.storage = storage
        self.capacity = capacity
        self._headers: OrderedDict[tuple[str, str], JobHeader] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, run_id: str) -> JobHeader:
        key = (job_id, run_id)
        with self._lock:
            if key in self._headers:
                self._headers.move_to_end(key)
                return self._headers[key]
        header = JobHeader.from_json(self.storage.get_bytes(jobs.header_key(job_id, run_id)))
        if (header.job_id, header.run_id) != key:
            raise GaveUp(f"the header at {jobs.header_key(job_id, run_id)} names another job or run")
        with self._lock:
            self._headers[key] = header
            while len(self._headers) > self.capacity:
                self._headers.popitem(last=False)
        return header


class ChunkProcessor:
    def __init__(self, settings: Settings, storage: Storage, ledger: Ledger, engine: Engine, worker: str,
                 detector: FaceDetector | None = None, batcher: MicroBatcher | None = None,
                 galleries: GalleryCache | None = None, metrics: NullMetrics | None = None,
                 crop_pool: CropPool | None = None):
        self.settings = settings
        self.metrics = metrics or NULL_METRICS  # faceq.workers.metrics: stage timings, rows by status
        self.storage = storage
        self.ledger = ledger
        self.engine = engine
        self.worker = worker
        self.detector = detector
        # detect mode, coarse to fine (FACEQ_DETECT_PATH=coarse): photos it cannot speed up take the full path
        self.coarse = (CoarseToFineDetector(detector, settings.detect_coarse_min_face)
                       if detector is not None and settings.detect_path == "coarse" else None)
        self.crop_pool = crop_pool  # crop mode's local items read by child processes (faceq.workers.crop_pool)
        # with a batcher, this chunk's crops share device batches with other tasks' crops
        self._batcher = batcher
        self._infer = (batcher.infer if batcher is not None
                       else self.metrics.direct_infer(engine.infer, getattr(engine, "max_batch", None)))
        self.galleries = galleries or GalleryCache(GalleryStore(storage), engine.device)
        self.headers = HeaderCache(storage)
        self.pixels = PixelBudget(settings.decode_pixel_budget)
        self.cpu = StageCPU()  # thread CPU per data-path stage: faceq_stage_cpu_seconds_total{stage}
        registry = getattr(self.metrics, "registry", None)
        if registry is not None:
            registry.register(self.cpu)
        self._io = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="faceq-io")
        # FACEQ_DETECT_DEVICE: detect mode on a torch device, the CPU path its fallback per photo
        self.device_detect = build_device_stage(settings, storage, detector, self.cpu)
        self._io_lock = threading.Lock()
        self.progress_every = DEFAULT_EVERY  # seconds between a running chunk's reports to the ledger

    def close(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)
        if self.crop_pool is not None:
            self.crop_pool.close()
        if self.device_detect is not None:
            self.device_detect.close()

    def allowed_sources(self, header: JobHeader) -> AllowedSources:
        """What this job may read: the worker's configured roots, the storage root and the job's
        own sources as recorded in its header (which only a holder of storage credentials writes)."""
        return AllowedSources.parse("", (*self.settings.allowed_sources, self.storage.url, *header.allowed_sources))

    def _prepare(self, item: Item, mode: str, allowed: AllowedSources,
                 out: np.ndarray | None = None) -> PreparedImage | BadInputError:
        """One item: fetch, decode, crop (or detect and align). In crop mode ``out`` is the
        item's row of the chunk's batch: its crop ends up there (a 112×112 JPEG is decoded
        straight into it)."""
        started = clock()
        try:
            uri = allowed.check(item.source_uri)
            data = self.storage.read_uri(uri, self.settings.max_image_bytes)
            fetched = clock()
            self.cpu.add("fetch", fetched - started)
            with self.pixels.hold(image_size(data)):
                image = decode_image(data, self.settings.max_image_bytes, self.settings.max_image_pixels, out)
                del data
                decoded = clock()
                self.cpu.add("decode", decoded - fetched)
                if mode == "detect" and self.coarse is not None:
                    # coarse to fine (FACEQ_DETECT_PATH=coarse): photos it cannot speed up take the full path
                    seconds = StageSeconds()
                    prepared = self.coarse.prepare(image, self.settings.min_face, seconds)
                    self.cpu.add_many(**seconds.as_dict())
                    if prepared is not None:
                        return prepared
                    decoded = clock()
                if mode == "detect":
                    prepared = detect_faces(image, self.detector, self.settings.min_face)
                else:
                    prepared = crop_face(image, out)
                self.cpu.add("detect" if mode == "detect" else "crop", clock() - decoded)
                return prepared
        except BadInputError as exc:
            return exc
        except StorageError as exc:
            if exc.transient:  # the store is down: retry the chunk later rather than write error rows
                raise
            return BadInputError("unreadable", str(exc))
        except Exception as exc:  # a decoder bug on one file must not cost the chunk
            log.exception("unexpected error preparing %s", item.source_uri)
            return BadInputError("internal", f"{type(exc).__name__}: {exc}")

    def _prepare_all(self, items: list[Item], mode: str, allowed: AllowedSources, batch: np.ndarray | None = None,
                     shared: SharedBatch | None = None, progress: ChunkProgress | None = None
                     ) -> list[PreparedImage | BadInputError]:
        """Every item prepared, or an error row for one that did not finish within the timeout.
        With ``batch`` (crop mode: (len(items), 112, 112, 3) uint8), item i's crop is left in
        ``batch[i]``. With ``shared`` (that batch in shared memory), the crop pool's children
        read the local items; the threads read the rest. ``progress`` hears of items that end
        here (an error, no face) as the threads finish them.
        """
        if mode == "detect" and self.device_detect is not None:
            return self.device_detect.prepare(items, allowed)
        prepared: list[PreparedImage | BadInputError | None] = [None] * len(items)
        local = {}
        if shared is not None:
            local = {i: item.source_uri for i, item in enumerate(items) if item.source_uri.startswith("file:")}
            outcomes, cpu = self.crop_pool.read(shared, local, allowed, self.settings.item_timeout_seconds,
                                                failed=None if progress is None else progress.settled)
            self.cpu.add_many(**cpu)
            for i, outcome in outcomes.items():
                prepared[i] = outcome
        rest = [i for i in range(len(items)) if i not in local]
        if rest:
            self._prepare_in_threads(items, rest, mode, allowed, batch, prepared, progress or ChunkProgress())
        return prepared

    def _prepare_in_threads(self, items: list[Item], indices: list[int], mode: str, allowed: AllowedSources,
                            batch: np.ndarray | None, prepared: list, progress: ChunkProgress) -> None:
        """``prepared[i]`` for each of ``indices``.

        A few pool threads (``_threads_for``) each take the next item until none is left: one
        task per thread rather than a future per item (the per-item bookkeeping cost more GIL
        time than a small JPEG's fetch). A thread stuck on one item holds up only that item.
        """
        with self._io_lock:
            pool = self._io
        n = len(indices)
        next_index = iter(indices).__next__  # atomic under the GIL
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    i = next_index()
                except StopIteration:
                    return
                try:
                    outcome = self._prepare(items[i], mode, allowed, None if batch is None else batch[i])
                except BaseException:  # the store is down: the others stop too, the chunk is retried
                    stop.set()
                    raise
                if not stop.is_set():
                    prepared[i] = outcome
                    if isinstance(outcome, BadInputError) or not outcome.faces:
                        progress.settled()  # its row needs no model: done now

        futures = [pool.submit(drain) for _ in range(min(self._threads_for([items[i] for i in indices[:8]]), n))]
        _, not_done = wait(futures, timeout=self.settings.item_timeout_seconds)
        stop.set()
        if not_done:
            # the stuck threads cannot be interrupted: give later chunks a fresh pool
            stuck = sum(prepared[i] is None for i in indices)
            log.error("%d item(s) did not finish reading within %.0fs; replacing the I/O pool",
                      stuck, self.settings.item_timeout_seconds)
            with self._io_lock:
                if self._io is pool:
                    self._io = ThreadPoolExecutor(self.settings.io_threads, thread_name_prefix="faceq-io")
                pool.shutdown(wait=False, cancel_futures=True)
        for future in futures:  # a transient storage error: the chunk is retried later
            if future.done() and future.exception() is not None:
                raise future.exception()
        timeout = BadInputError("timeout", f"not read and decoded within {self.settings.item_timeout_seconds:.0f}s")
        for i in indices:
            if prepared[i] is None:
                prepared[i] = timeout

    def _threads_for(self, items: list[Item]) -> int:
        """Local files: one thread per usable core. More would not decode faster but would fight
        over the GIL at every system call (measured: 8 threads cost 1.7× the CPU per item of 2).
        Network reads wait: up to ``io_threads`` then, to keep that many requests in flight."""
        if any(not item.source_uri.startswith("file:") for item in items[:8]):
            return self.settings.io_threads
        return max(1, min(self.settings.io_threads, usable_cores()))

    def rows(self, header: JobHeader, items: list[Item], progress: ChunkProgress | None = None
             ) -> list[ItemResult]:
        """Rows in item order: one per item (its largest face, ``no_face`` or ``error``), or
        one per usable face with ``all_faces``; attendance rows carry the decision against
        the gallery, compare rows (one per pair) the decision on their two photos.
        ``progress``: counts the items with their results so far."""
        progress = progress or ChunkProgress()
        if header.kind == "compare":
            return self._compare_rows(header, items, progress)
        rows = self._image_rows(header, items, progress)
        if header.verifies:
            self._verify(header, rows)
        return rows

    def _image_rows(self, header: JobHeader, items: list[Item], progress: ChunkProgress) -> list[ItemResult]:
        if header.mode == "detect" and self.detector is None:
            raise ModelError(no_detector_message(header.job_id))
        if header.mode != "crop":
            return self._rows_of(header, items, None, None, progress)
        # crop mode: every crop is written into its row of one batch, so no per-crop array is
        # allocated and nothing is stacked before the device; with a crop pool the batch is in
        # shared memory and its children write the local items' crops
        with self.crop_pool.batch(len(items)) if self.crop_pool else nullcontext() as shared:
            batch = np.empty((len(items), INPUT_SIZE, INPUT_SIZE, 3), np.uint8) if shared is None else shared.crops
            return self._rows_of(header, items, batch, shared, progress)

    def _rows_of(self, header: JobHeader, items: list[Item], batch: np.ndarray | None, shared: SharedBatch | None,
                 progress: ChunkProgress) -> list[ItemResult]:
        with self.metrics.stage("prepare"):
            prepared = self._prepare_all(items, header.mode, self.allowed_sources(header), batch, shared, progress)
        rows_started = clock()
        faces = [  # (item index, face crop) for every face that goes through the model
            (i, face)
            for i, outcome in enumerate(prepared)
            if isinstance(outcome, PreparedImage)
            for face in outcome.faces[: None if header.all_faces else 1]
        ]
        faces_of_item: dict[int, list[int]] = {}
        for position, (i, _) in enumerate(faces):
            faces_of_item.setdefault(i, []).append(position)
        progress.settled_total(len(items) - len(faces_of_item))
        embeddings, quality = (None, None)
        if faces:
            with self.metrics.stage("device"):
                if batch is None:
                    crops = np.stack([face.pixels for _, face in faces])
                else:
                    crops = batch if len(faces) == len(items) else batch[[i for i, _ in faces]]
                last_faces = sorted(positions[-1] for positions in faces_of_item.values())
                embeddings, quality = self._infer_reporting(crops, progress.faces_done(last_faces))
        now = datetime.now(timezone.utc)
        rows = []
        for i, (item, outcome) in enumerate(zip(items, prepared)):
            base = dict(item_id=item.item_id, source_uri=item.source_uri, model_id=self.engine.model_id,
                        processed_at=now, fields=item.fields)
            if isinstance(outcome, BadInputError):
                item_rows = [ItemResult(status="error", error=str(outcome), **base)]
            elif not outcome.faces:
                item_rows = [ItemResult(status="no_face", **base)]
            else:
                item_rows = [
                    ItemResult(status="ok", embedding=embeddings[p], quality=float(quality[p]),
                               face_count=outcome.face_count, face_index=k, bbox=faces[p][1].bbox,
                               landmarks=faces[p][1].landmarks, **base)
                    for k, p in enumerate(faces_of_item[i])
                ]
            for row in item_rows:
                row.review_reasons = review_reasons(row.status, row.quality, row.face_count, self.settings.thresholds)
                row.needs_review = bool(row.review_reasons)
            rows.extend(item_rows)
        self.cpu.add("rows", clock() - rows_started)
        return rows

    def _compare_rows(self, header: JobHeader, pairs: list[Item], progress: ChunkProgress) -> list[ItemResult]:
        """One row per pair. Every distinct photo of the chunk goes through the model once,
        however many pairs it appears in; its largest face is the one compared (progress:
        pairs in proportion to the photos with results)."""
        photos: dict[str, int] = {}
        for pair in pairs:
            photos.setdefault(pair.source_uri, len(photos))
            photos.setdefault(pair.fields.get(SECOND_IMAGE_FIELD, ""), len(photos))  # "": a bad_uri row
        progress.count_as(lambda n: len(pairs) * n // len(photos))
        photo_rows = self._image_rows(header, [Item(uri, uri) for uri in photos], progress)
        rows = []
        for pair in pairs:
            b_uri = pair.fields.get(SECOND_IMAGE_FIELD, "")
            a, b = photo_rows[photos[pair.source_uri]], photo_rows[photos[b_uri]]
            similarity = float(np.dot(a.embedding, b.embedding)) if a.status == b.status == "ok" else None
            status = "error" if "error" in (a.status, b.status) else "no_face" if "no_face" in (a.status, b.status) \
                else "ok"
            errors = [f"{side}: {row.error}" for side, row in (("image_a", a), ("image_b", b)) if row.error]
            verdict = compare_pair(a.status, a.quality, b.status, b.quality, similarity, self.settings.thresholds,
                                   multiple_faces=a.face_count > 1 or b.face_count > 1)
            rows.append(ItemResult(
                item_id=pair.item_id, source_uri=pair.source_uri, status=status, model_id=a.model_id,
                processed_at=a.processed_at, error="; ".join(errors) or None, embedding=a.embedding,
                quality=a.quality, needs_review=verdict.needs_review, review_reasons=list(verdict.reasons),
                face_count=a.face_count, bbox=a.bbox, landmarks=a.landmarks, fields=pair.fields,
                decision=verdict.decision, similarity=similarity, source_uri_b=b_uri, embedding_b=b.embedding,
                quality_b=b.quality, face_count_b=b.face_count, bbox_b=b.bbox, landmarks_b=b.landmarks,
            ))
        return rows

    def _infer_reporting(self, crops: np.ndarray, on_faces: Callable[[int], None]):
        """The model on ``crops``, ``on_faces`` hearing how many have results: with a batcher
        while this thread waits, without one after each engine batch (the call is cut where the
        engine would cut it)."""
        if self._batcher is not None:
            return self._batcher.infer(crops, on_faces, every=0.1)  # only a counter: cheap to poll
        step = getattr(self.engine, "max_batch", None) or MODEL_SLICE
        return infer_in_slices(self._infer, crops, step, on_faces)

    def _verify(self, header: JobHeader, rows: list[ItemResult]) -> None:
        """Attendance: 1:1 decision against the claimed employee, best 1:N candidates."""
        gallery = self.galleries.get(header.gallery, header.gallery_version)
        if gallery.gallery.model_id != self.engine.model_id:
            raise ModelError(
                f"gallery {gallery.gallery.ref} was enrolled with model {gallery.gallery.model_id} but this worker "
                f"runs {self.engine.model_id}: embeddings of different models cannot be compared; re-enrol the "
                f"gallery with this model or point the worker at the gallery's weights"
            )
        ok = [row for row in rows if row.status == "ok"]
        matches = gallery.match(np.stack([r.embedding for r in ok]), [r.fields.get("employee_id") for r in ok],
                                header.top_k) if ok else None
        position = {id(row): k for k, row in enumerate(ok)}
        for row in rows:
            row.gallery = gallery.gallery.ref
            k = position.get(id(row))
            enrolled = row.fields.get("employee_id") in gallery.index
            if k is not None:
                similarity = float(matches.claimed_similarity[k])
                row.similarity = None if np.isnan(similarity) else similarity
                row.best_candidate_id = matches.top_ids[k][0]
                row.best_candidate_score = float(matches.top_scores[k][0])
                if header.top_k:
                    row.top_k_ids = matches.top_ids[k]
                    row.top_k_scores = matches.top_scores[k].tolist()
            verdict = verify(row.status, row.quality, row.similarity, enrolled, self.settings.thresholds)
            row.decision = verdict.decision
            row.review_reasons = list(verdict.reasons)
            row.needs_review = verdict.needs_review

    def _redis(self, call, what: str):
        return redis_retry(call, what, self.settings.redis_retry_seconds)

    def items(self, header: JobHeader, index: int) -> list[Item]:
        data = self.storage.get_bytes(jobs.chunk_manifest_key(header.job_id, header.run_id, index))
        return read_chunk_manifest(data, header.columns)

    def process(self, ref: ChunkRef) -> ChunkOutcome:
        start = time.perf_counter()
        current, state = self._redis(lambda: self.ledger.run_state(ref.job_id), f"job {ref.job_id}: ledger read")
        if current != ref.run_id or state == "cancelled":
            log.warning("job %s chunk %d: message of run %s, but the ledger's run is %s (%s): dropped", ref.job_id,
                        ref.index, ref.run_id, current, state)
            return ChunkOutcome(ChunkRecord.STALE, 0, 0, 0, 0.0)
        header = self.headers.get(ref.job_id, ref.run_id)
        if not 0 <= ref.index < header.n_chunks:
            raise GaveUp(f"chunk {ref.index} does not exist (the job has {header.n_chunks})")
        if self._redis(lambda: self.ledger.chunk_done(ref.job_id, ref.index), "ledger read"):
            # a redelivery of a recorded chunk: re-record (idempotent) to learn whether the job is complete
            record = self._record(header, ref.index, {"n_items": header.chunk_items(ref.index)})
            return ChunkOutcome(record, 0, 0, 0, 0.0, skipped=True)
        deliveries = self._redis(lambda: self.ledger.count_delivery(ref.job_id, ref.index), "ledger write")
        if deliveries > self.settings.max_deliveries:
            raise GaveUp(f"started {deliveries - 1} times without finishing (the worker died or hung each time: "
                         f"a poison input?); not tried again")
        items = self.items(header, ref.index)
        with ChunkProgress(self._progress_reporter(ref), self.progress_every) as progress:
            rows = self.rows(header, items, progress)
        seconds = time.perf_counter() - start
        stats = {
            "n_items": len(items),
            "n_rows": len(rows),
            "n_errors": sum(r.status == "error" for r in rows),
            "n_flagged": sum(r.needs_review for r in rows),
            "seconds": round(seconds, 4),
            "finished_at": time.time(),
            "worker": self.worker,
        }
        # retried through storage outages with the rows kept: the model is not run again
        with self.metrics.stage("write"), self.cpu.stage("write"):
            self.storage.put_bytes(jobs.part_key(ref.job_id, ref.run_id, ref.index),
                                   chunk_part_bytes(rows, header, stats))
        with self.metrics.stage("record"), self.cpu.stage("record"):
            record = self._record(header, ref.index, stats)
        self.metrics.count_rows(rows)
        self.metrics.observe_stage("total", time.perf_counter() - start)
        log.info(
            "job %s chunk %d: %d items → %d rows, %d errors, %d flagged in %.2fs (%.1f items/s) → %s",
            ref.job_id, ref.index, len(items), len(rows), stats["n_errors"], stats["n_flagged"], seconds,
            len(items) / max(seconds, 1e-9), record.name.lower(),
        )
        return ChunkOutcome(record, len(items), stats["n_errors"], stats["n_flagged"], seconds)

    def _progress_reporter(self, ref: ChunkRef) -> Callable[[int], None]:
        """Items of this chunk with results so far, into the ledger. Best effort and never
        retried: progress must not slow the chunk down, and recording the chunk counts it whole."""

        def report(items_done: int) -> None:
            try:
                self.ledger.chunk_progress(ref.job_id, ref.run_id, ref.index, items_done)
            except REDIS_ERRORS as exc:
                log.debug("job %s chunk %d: progress not reported: %s", ref.job_id, ref.index, exc)

        return report

    def _record(self, header: JobHeader, index: int, stats: dict) -> ChunkRecord:
        return self._redis(lambda: self.ledger.record_chunk(header.job_id, header.run_id, index, stats),
                           f"job {header.job_id} chunk {index}: recording")


class _LeaseRenewer:
    """Renews a finalize lease from a daemon thread while the summary is being written."""

    def __init__(self, lease, interval: float):
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True, name="faceq-finalize")

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.lease.renew()
            except Exception as exc:  # the broker is down: the lease may lapse, finalize is idempotent
                log.warning("finalize lease not renewed: %s", exc)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()


def finalize_job(storage: Storage, ledger: Ledger, job_id: str, run_id: str,
                 thresholds: TrustThresholds | None = None, redis_window: float = 0.0) -> FinalizeOutcome:
    """Write the run's review list, report and summary exactly once, whoever finished last.

    The lease expires 30 s after its holder stops renewing it; the holder's message is then
    redelivered (it is acknowledged only after this returns) and the next worker takes over.
    Every Redis call here is retried through an outage of up to ``redis_window`` seconds, as
    the chunk path's are: each is idempotent (a read, a SET NX whose lost reply only delays a
    takeover by one lease, a HSET of the same value), so a Redis restart during finalize ends
    in a done job, not in a failure.
    """
    thresholds = thresholds or TrustThresholds()

    def redis(call, what: str):
        return redis_retry(call, f"job {job_id} finalize: {what}", redis_window)

    progress = redis(lambda: ledger.progress(job_id), "reading progress")
    if progress is None or progress.run_id != run_id:
        return FinalizeOutcome.STALE
    if progress.complete:
        return FinalizeOutcome.ALREADY_DONE
    lease = redis(lambda: ledger.claim_finalize(job_id, run_id, FINALIZE_LEASE_SECONDS), "claiming the lease")
    if lease is None:
        return FinalizeOutcome.BUSY
    try:
        with _LeaseRenewer(lease, FINALIZE_LEASE_SECONDS / 3):
            header = JobHeader.from_json(storage.get_bytes(jobs.header_key(job_id, run_id)))
            summary = finalize(storage, header, thresholds,
                               lock=lambda gallery: _RetryingLock(ledger.redis.lock(f"faceq:gallery-lock:{gallery}",
                                                                                    timeout=300), redis),
                               still_current=lambda: redis(lambda: ledger.is_current(job_id, run_id),
                                                           "checking the run is current"))
            if summary is None:
                return FinalizeOutcome.STALE
            redis(lambda: ledger.mark_done(job_id, run_id), "marking the job done")
    finally:
        try:
            redis(lease.release, "releasing the lease")
        except REDIS_ERRORS as exc:  # it lapses on its own within FINALIZE_LEASE_SECONDS
            log.warning("job %s: finalize lease not released: %s", job_id, exc)
    log.info("job %s finalized: %s", job_id, summary["counts"])
    return FinalizeOutcome.WRITTEN


class _RetryingLock:
    """A redis-py lock whose acquire and release ride out a Redis outage (a gallery's publish)."""

    def __init__(self, lock, redis: Callable):
        self.lock, self.redis = lock, redis

    def __enter__(self):
        if not self.redis(lambda: self.lock.acquire(blocking=True), "taking the gallery lock"):
            raise LockError("the gallery lock was not acquired")
        return self

    def __exit__(self, *exc):
        try:
            self.redis(self.lock.release, "releasing the gallery lock")
        except LockError:  # expired meanwhile (a long outage): nothing left to release
            pass
