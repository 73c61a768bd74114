"""Plan a job and enqueue it: manifest first, then the ledger, then one task per chunk."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone

from faceq import jobs
from faceq.errors import JobError
from faceq.gallery import GalleryStore, validate_gallery_name
from faceq.jobs import Item, JobManifest
from faceq.ledger import Ledger
from faceq.settings import Settings
from faceq.storage import Storage

log = logging.getLogger(__name__)


def new_job_id(kind: str) -> str:
    return f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def submit(
    settings: Settings,
    storage: Storage,
    ledger: Ledger,
    *,
    kind: str,
    items: list[Item],
    source: str,
    job_id: str,
    chunk_size: int | None = None,
    mode: str = "crop",
    all_faces: bool = False,
    gallery: str | None = None,
    top_k: int = 0,
    baseline_job_id: str | None = None,
    report: bool = True,
) -> JobManifest:
    """Write the manifest, register the run, and send one ``process_chunk`` task per chunk.

    Re-submitting an existing job id starts a new run: earlier results are deleted first and
    messages of the earlier run still in the queue are dropped by the workers, so the job's
    results never hold a row twice.
    """
    from workers.app import PROCESS_CHUNK, app

    if kind not in jobs.JOB_KINDS:
        raise JobError(f"unknown job kind {kind!r}")
    if mode not in jobs.MODES:
        raise JobError(f"unknown mode {mode!r}; available: {', '.join(jobs.MODES)}")
    if all_faces and mode != "detect":
        raise JobError("--all-faces needs detect mode")
    if kind == "enroll" and not gallery:
        raise JobError("an enrolment job needs a gallery name")
    gallery_version = None
    if kind == "attendance" and gallery:  # fixed now: a later enrolment does not change this job
        gallery_version = GalleryStore(storage).current_version(gallery)
    if gallery:
        validate_gallery_name(gallery)
    if not items:
        raise JobError("a job needs at least one item")
    ids = [i.item_id for i in items]
    if len(set(ids)) != len(ids):
        raise JobError("item ids must be unique within a job")
    manifest = JobManifest(
        job_id=jobs.validate_job_id(job_id),
        run_id=uuid.uuid4().hex,
        kind=kind,
        mode=mode,
        source=source,
        created_at=datetime.now(timezone.utc).isoformat(),
        chunk_size=chunk_size or settings.chunk_size,
        items=tuple(items),
        model_weights=settings.model_weights,
        all_faces=all_faces,
        gallery=gallery,
        gallery_version=gallery_version,
        top_k=top_k,
        baseline_job_id=baseline_job_id,
        report=report,
    )
    removed = storage.delete_prefix(jobs.results_prefix(job_id))
    for key in (jobs.summary_key(job_id), jobs.review_key(job_id), jobs.report_key(job_id)):
        storage.delete_prefix(key)
    if removed:
        log.info("job %s existed: removed %d result parts of the earlier run", job_id, removed)
    storage.put_bytes(jobs.manifest_key(job_id), manifest.to_json(), "application/json")
    ledger.start(job_id, manifest.run_id, kind, manifest.n_chunks, len(items))
    with app.producer_or_acquire() as producer:
        for chunk in manifest.chunks():
            app.send_task(PROCESS_CHUNK, args=[chunk.to_message()], producer=producer)
    log.info("job %s: %d items in %d chunks enqueued", job_id, len(items), manifest.n_chunks)
    return manifest
