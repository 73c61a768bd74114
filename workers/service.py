"""Chunk processing and job finalization as plain Python services (no Celery here).

``ChunkProcessor.process`` turns one chunk of item references into one Parquet object:
fetch + decode + crop in a thread pool (I/O and Pillow/OpenCV release the GIL), one pass of
the good crops through the engine, and an ``error`` row for every item that failed — a bad
item never fails its chunk.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

import numpy as np

from faceq import jobs
from faceq.errors import BadInputError, ModelError, StorageError
from faceq.jobs import ChunkSpec, Item, JobManifest
from faceq.ledger import ChunkRecord, Ledger
from faceq.results import ItemResult, to_parquet, to_table
from faceq.settings import Settings, TrustThresholds
from faceq.storage import Storage
from faceq.summary import finalize
from faceq.gallery import GalleryStore
from models.decisions import review_reasons, verify
from models.detect import YUNET_HELP, FaceDetector
from models.preprocess import PreparedImage, crop_face, decode_image, detect_faces
from workers.batcher import MicroBatcher
from workers.engine import Engine
from workers.galleries import GalleryCache

log = logging.getLogger(__name__)

FINALIZE_LEASE_SECONDS = 300


class FinalizeOutcome(Enum):
    WRITTEN = "written"
    ALREADY_DONE = "already_done"
    BUSY = "busy"  # another worker holds the lease (or died holding it): try again later
    STALE = "stale"


@dataclass(frozen=True)
class ChunkOutcome:
    record: ChunkRecord
    n_items: int
    n_errors: int
    n_flagged: int
    seconds: float


class ChunkProcessor:
    def __init__(self, settings: Settings, storage: Storage, ledger: Ledger, engine: Engine, worker: str,
                 detector: FaceDetector | None = None, batcher: MicroBatcher | None = None,
                 galleries: GalleryCache | None = None):
        self.settings = settings
        self.storage = storage
        self.ledger = ledger
        self.engine = engine
        self.worker = worker
        self.detector = detector
        # with a batcher, this chunk's crops share device batches with other tasks' crops
        self._infer = batcher.infer if batcher is not None else engine.infer
        self.galleries = galleries or GalleryCache(GalleryStore(storage), engine.device)
        self._io = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="faceq-io")

    def close(self) -> None:
        self._io.shutdown(wait=True)

    def _prepare(self, item: Item, mode: str) -> PreparedImage | BadInputError:
        try:
            data = self.storage.read_uri(item.source_uri)
        except StorageError as exc:
            return BadInputError("unreadable", str(exc))
        try:
            image = decode_image(data, self.settings.max_image_bytes, self.settings.max_image_pixels)
            if mode == "detect":
                return detect_faces(image, self.detector, self.settings.min_face)
            return crop_face(image)
        except BadInputError as exc:
            return exc
        except Exception as exc:  # a decoder bug on one file must not cost the chunk
            log.exception("unexpected error preparing %s", item.source_uri)
            return BadInputError("internal", f"{type(exc).__name__}: {exc}")

    def rows(self, spec: ChunkSpec) -> list[ItemResult]:
        """Rows in item order: one per item (its largest face, ``no_face`` or ``error``), or
        one per usable face with ``all_faces``."""
        if spec.mode == "detect" and self.detector is None:
            raise ModelError(f"job {spec.job_id} asks for detect mode but this worker has no detector. {YUNET_HELP}")
        prepared = list(self._io.map(lambda item: self._prepare(item, spec.mode), spec.items))
        faces = [  # (item index, face crop) for every face that goes through the model
            (i, face)
            for i, outcome in enumerate(prepared)
            if isinstance(outcome, PreparedImage)
            for face in outcome.faces[: None if spec.all_faces else 1]
        ]
        embeddings, quality = (None, None)
        if faces:
            embeddings, quality = self._infer(np.stack([face.pixels for _, face in faces]))
        faces_of_item: dict[int, list[int]] = {}
        for position, (i, _) in enumerate(faces):
            faces_of_item.setdefault(i, []).append(position)
        now = datetime.now(timezone.utc)
        rows = []
        for i, (item, outcome) in enumerate(zip(spec.items, prepared)):
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
        if spec.gallery:
            self._verify(spec, rows)
        return rows

    def _verify(self, spec: ChunkSpec, rows: list[ItemResult]) -> None:
        """Attendance: 1:1 decision against the claimed employee, best 1:N candidates."""
        gallery = self.galleries.get(spec.gallery, spec.gallery_version)
        if gallery.gallery.model_id != self.engine.model_id:
            raise ModelError(
                f"gallery {gallery.gallery.ref} was enrolled with model {gallery.gallery.model_id} but this worker "
                f"runs {self.engine.model_id}: embeddings of different models cannot be compared; re-enrol the "
                f"gallery with this model or point the worker at the gallery's weights"
            )
        ok = [row for row in rows if row.status == "ok"]
        matches = gallery.match(np.stack([r.embedding for r in ok]), [r.fields.get("employee_id") for r in ok],
                                spec.top_k) if ok else None
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
                if spec.top_k:
                    row.top_k_ids = matches.top_ids[k]
                    row.top_k_scores = matches.top_scores[k].tolist()
            verdict = verify(row.status, row.quality, row.similarity, enrolled, self.settings.thresholds)
            row.decision = verdict.decision
            row.review_reasons = list(verdict.reasons)
            row.needs_review = verdict.needs_review

    def process(self, spec: ChunkSpec) -> ChunkOutcome:
        start = time.perf_counter()
        if not self.ledger.is_current(spec.job_id, spec.run_id):
            log.warning("job %s chunk %d: stale message of an earlier run, dropped", spec.job_id, spec.index)
            return ChunkOutcome(ChunkRecord.STALE, 0, 0, 0, 0.0)
        rows = self.rows(spec)
        extra = list(spec.items[0].fields) if spec.items else []
        table = to_table(rows, extra, verification=spec.gallery is not None)
        self.storage.put_bytes(jobs.part_key(spec.job_id, spec.index), to_parquet(table))
        seconds = time.perf_counter() - start
        n_errors = sum(r.status == "error" for r in rows)
        n_items = len(spec.items)
        n_flagged = sum(r.needs_review for r in rows)
        stats = {
            "n_items": n_items,
            "n_rows": len(rows),
            "n_errors": n_errors,
            "n_flagged": n_flagged,
            "seconds": round(seconds, 4),
            "finished_at": time.time(),
            "worker": self.worker,
        }
        record = self.ledger.record_chunk(spec.job_id, spec.run_id, spec.index, stats)
        log.info(
            "job %s chunk %d: %d items → %d rows, %d errors, %d flagged in %.2fs (%.1f items/s) → %s",
            spec.job_id, spec.index, n_items, len(rows), n_errors, n_flagged, seconds, n_items / max(seconds, 1e-9),
            record.name.lower(),
        )
        return ChunkOutcome(record, n_items, n_errors, n_flagged, seconds)


def finalize_job(storage: Storage, ledger: Ledger, job_id: str, run_id: str,
                 thresholds: TrustThresholds | None = None) -> FinalizeOutcome:
    """Write summary.json and review.csv exactly once per run, whoever finished last."""
    thresholds = thresholds or TrustThresholds()
    progress = ledger.progress(job_id)
    if progress is None or progress.run_id != run_id:
        return FinalizeOutcome.STALE
    if progress.complete:
        return FinalizeOutcome.ALREADY_DONE
    if not ledger.claim_finalize(job_id, run_id, FINALIZE_LEASE_SECONDS):
        return FinalizeOutcome.BUSY
    try:
        manifest = JobManifest.from_json(storage.get_bytes(jobs.manifest_key(job_id)))
        if manifest.run_id != run_id:
            ledger.release_finalize(job_id)
            return FinalizeOutcome.STALE
        summary = finalize(storage, manifest, progress, ledger.chunk_stats(job_id), thresholds,
                           lock=lambda gallery: ledger.redis.lock(f"faceq:gallery-lock:{gallery}", timeout=300))
    except BaseException:
        ledger.release_finalize(job_id)
        raise
    ledger.mark_done(job_id, run_id)
    log.info("job %s finalized: %s", job_id, summary["counts"])
    return FinalizeOutcome.WRITTEN
