"""``python -m producer``: submit audit, attendance and enrolment jobs, follow them, read their results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from datetime import datetime, timezone
from typing import Iterable

from faceq import jobs
from faceq.allow import AllowedSources
from faceq.errors import FaceqError, JobError
from faceq.heartbeats import read_heartbeats
from faceq.ledger import Ledger
from faceq.redact import install_log_redaction, redact_text, redact_url
from faceq.retry import REDIS_ERRORS
from faceq.settings import Settings
from faceq.storage import Storage
from producer import sources
from producer.progress import JobStateLost, finished_summary, lost_state_message, wait_for_job, workers_online
from producer.report import fetch_report
from producer.resume import current_header, resume
from producer.submit import JobOptions, new_job_id, submit

log = logging.getLogger("producer")


def _add_job_options(parser: argparse.ArgumentParser, default_mode: str) -> None:
    parser.add_argument("--job-id", help="job id (default: generated); re-using one re-runs that job")
    parser.add_argument("--mode", choices=jobs.MODES, default=default_mode,
                        help=f"detect: find and align faces (YuNet); crop: images are face crops (default {default_mode})")
    parser.add_argument("--chunk-size", type=int, help="items per task (default FACEQ_CHUNK_SIZE or 256)")
    parser.add_argument("--no-report", action="store_true", help="skip report.html (summary and review.csv stay)")
    parser.add_argument("--baseline", metavar="JOB_ID",
                        help="compare per-source quality with this job (default: the last job of the same kind)")
    _add_wait_options(parser, "--wait")


def _add_wait_options(parser: argparse.ArgumentParser, flag: str | None = None) -> None:
    if flag:
        parser.add_argument(flag, action="store_true", help="show progress until the job is done")
    parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="score every image under a directory or s3:// prefix")
    audit.add_argument("source", help="local directory or s3://bucket/prefix")
    audit.add_argument("--all-faces", action="store_true", help="detect mode: a row for every face, not only the largest")
    _add_job_options(audit, default_mode="detect")
    attendance = commands.add_parser("attendance", help="score the check-in photos of an attendance manifest")
    attendance.add_argument("manifest", help="CSV (local or s3://): record_id, employee_id, image, device_id, captured_at")
    attendance.add_argument("--gallery", help="verify each check-in against this enrolled gallery")
    attendance.add_argument("--top-k", type=int, default=0, help="with --gallery: list the K best 1:N candidates")
    _add_job_options(attendance, default_mode="crop")
    enroll = commands.add_parser("enroll", help="build a new version of an enrolment gallery")
    enroll.add_argument("manifest", help="CSV (local or s3://): employee_id, image (several images per employee allowed)")
    enroll.add_argument("--gallery", required=True, help="gallery name")
    _add_job_options(enroll, default_mode="crop")
    report = commands.add_parser("report", help="fetch (or regenerate) a job's report.html")
    report.add_argument("job_id")
    report.add_argument("--out", type=Path, help="where to write it (default: <job_id>.html)")
    report.add_argument("--regenerate", action="store_true", help="render it again from the job's results")
    status = commands.add_parser("status", help="progress of a job as JSON (with its summary once done)")
    status.add_argument("job_id")
    resume_cmd = commands.add_parser("resume", help="rebuild a job's state from storage and run only the chunks "
                                                    "without results (after a Redis loss or fixed failures)")
    resume_cmd.add_argument("job_id")
    _add_wait_options(resume_cmd, "--wait")
    commands.add_parser("workers", help="live workers from their heartbeats (device, batch settings, images/s)")
    wait = commands.add_parser("wait", help="wait for a job to finish, with progress")
    wait.add_argument("job_id")
    wait.add_argument("--resume", action="store_true", help="if Redis lost the job's state, resume it from storage")
    _add_wait_options(wait)
    return parser


def _print_summary(summary: dict, storage: Storage) -> None:
    counts = summary["counts"]
    print(f"job {summary['job_id']} done: {summary['n_rows']} rows for {summary['n_items']} items")
    print(f"  status:       {json.dumps(counts['status'])}")
    print(f"  needs review: {counts['needs_review']}  reasons: {json.dumps(counts['review_reasons'])}")
    print(f"  quality:      median {summary['quality']['median']}  (model {', '.join(summary['model_ids'])})")
    print(f"  throughput:   {summary['timings']['items_per_second']} items/s over {summary['timings']['wall_seconds']}s")
    print(f"  results:      {storage.uri(summary['outputs']['results'])}")
    print(f"  review list:  {storage.uri(summary['outputs']['review'])}")
    print(f"  summary:      {storage.uri(jobs.summary_key(summary['job_id']))}")
    if isinstance(summary.get("gallery"), dict):
        gallery = summary["gallery"]
        print(f"  gallery:      {gallery['name']} v{gallery['version']}: {gallery['enrolled']} employees enrolled, "
              f"{len(gallery['rejected_images'])} images rejected, "
              f"{len(gallery['employees_without_usable_image'])} employees without a usable image, "
              f"{len(gallery['likely_duplicates'])} likely duplicate pairs")
    if "decision" in summary["counts"]:
        print(f"  decisions:    {json.dumps(summary['counts']['decision'])}")
    for alert in summary["alerts"]:
        print(f"  ALERT:        {alert['message']}")
    if storage.exists(summary["outputs"]["report"]):
        print(f"  report:       {storage.uri(summary['outputs']['report'])}")
    if any("-random-" in model_id for model_id in summary["model_ids"]):
        print("  WARNING: produced with seeded RANDOM weights (FACEQ_MODEL_WEIGHTS unset): the embeddings and "
              "quality scores are placeholders, not face recognition.")


def _wait(args, settings: Settings, storage: Storage, ledger: Ledger, job_id: str) -> int:
    try:
        if not workers_online():
            print(f"warning: no faceq worker answers on {redact_url(settings.broker_url)}; the job waits until one "
                  f"starts", file=sys.stderr)
    except Exception as exc:  # the broker is down: wait_for_job says so and keeps trying
        log.debug("ping failed: %s", exc)
    notify = lambda message: print(message, file=sys.stderr)  # noqa: E731
    try:
        result = wait_for_job(ledger, storage, job_id, timeout=args.timeout, show_progress=not args.no_progress,
                              notify=notify)
    except JobStateLost:
        if not getattr(args, "resume", False):
            raise
        resumed = resume(storage, ledger, job_id)
        print(f"job {job_id}: state rebuilt from storage; {resumed.chunks_with_parts} of {resumed.header.n_chunks} "
              f"chunks had results, {resumed.chunks_enqueued} enqueued", file=sys.stderr)
        result = wait_for_job(ledger, storage, job_id, timeout=args.timeout, show_progress=not args.no_progress,
                              notify=notify)
    _print_summary(result.summary, storage)
    return 0


def _plan(args, settings: Settings, storage: Storage) -> tuple[Iterable, str, tuple[str, ...]]:
    """The items of a new job (an iterator), its source, and the roots its items may come from."""
    if args.command == "audit":
        if args.source.startswith("s3://"):
            return sources.iter_s3_prefix(args.source, settings.s3_endpoint_url), args.source, (args.source,)
        root = Path(args.source).resolve()
        return sources.iter_directory(root), str(root), (root.as_uri(),)
    manifest = args.manifest
    base = manifest.rsplit("/", 1)[0] + "/" if manifest.startswith("s3://") else Path(manifest).resolve().parent.as_uri()
    allowed = AllowedSources.parse("", (*settings.allowed_sources, storage.url, base))
    read = sources.iter_attendance_manifest if args.command == "attendance" else sources.iter_enrolment_manifest
    # the roots this producer allowed travel in the job's header: the workers read the same ones
    return read(manifest, allowed, s3_endpoint_url=settings.s3_endpoint_url), manifest, (base, *settings.allowed_sources)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    storage = settings.open_storage()
    ledger = settings.open_ledger()
    if args.command in ("audit", "attendance", "enroll"):
        job_id = jobs.validate_job_id(args.job_id or new_job_id(args.command))
        items, source, roots = _plan(args, settings, storage)
        options = JobOptions(kind=args.command, mode=args.mode, chunk_size=args.chunk_size,
                             all_faces=getattr(args, "all_faces", False), gallery=getattr(args, "gallery", None),
                             top_k=getattr(args, "top_k", 0), baseline_job_id=args.baseline, report=not args.no_report)
        header = submit(settings, storage, ledger, items=items, source=source, job_id=job_id, options=options,
                        allowed_sources=roots, progress=not args.no_progress)
        print(f"job {job_id}: {header.n_items} items in {header.n_chunks} chunk(s) queued on '{settings.queue}'; "
              f"plan {storage.uri(jobs.header_key(job_id, header.run_id))}")
        return _wait(args, settings, storage, ledger, job_id) if args.wait else 0
    if args.command == "wait":
        return _wait(args, settings, storage, ledger, args.job_id)
    if args.command == "resume":
        resumed = resume(storage, ledger, args.job_id)
        if resumed.already_complete:
            print(f"job {args.job_id} is already complete: {storage.uri(jobs.summary_key(args.job_id))}")
            return 0
        print(f"job {args.job_id}: {resumed.chunks_with_parts} of {resumed.header.n_chunks} chunks have results; "
              f"{resumed.chunks_enqueued} enqueued" + ("" if resumed.chunks_enqueued else ", finalize enqueued"))
        return _wait(args, settings, storage, ledger, args.job_id) if args.wait else 0
    if args.command == "workers":
        print(json.dumps(read_heartbeats(ledger.redis), indent=2))
        return 0
    if args.command == "report":
        out = args.out or Path(f"{args.job_id}.html")
        out.write_bytes(fetch_report(storage, args.job_id, regenerate=args.regenerate))
        print(f"wrote {out}")
        return 0
    return _status(settings, storage, ledger, args.job_id)


def _status(settings: Settings, storage: Storage, ledger: Ledger, job_id: str) -> int:
    progress = ledger.progress(job_id)
    summary = finished_summary(storage, job_id, progress.run_id if progress else None)
    if progress is None and summary is None:
        if current_header(storage, job_id) is not None:
            raise JobStateLost(lost_state_message(job_id))
        raise JobError(f"no job {job_id!r} on {redact_url(settings.broker_url)} or in {redact_url(storage.url)}")
    state = dataclasses.asdict(progress) if progress else {"job_id": job_id, "state": "done",
                                                           "note": "finished; Redis has forgotten it (retention)"}
    for key in ("created_at", "finished_at"):
        if state.get(key):
            state[key] = datetime.fromtimestamp(state[key], timezone.utc).isoformat()
    print(json.dumps({**state, "summary": summary}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except JobStateLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except FaceqError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except REDIS_ERRORS as exc:
        print(f"error: the broker is unreachable ({redact_text(str(exc))}); is Redis running at "
              f"{redact_url(Settings.from_env().broker_url)}?", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
