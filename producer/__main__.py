"""``python -m producer``: submit audit, attendance and enrolment jobs, follow them, read their results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from faceq import jobs
from faceq.errors import FaceqError
from faceq.heartbeats import read_heartbeats
from faceq.ledger import Ledger
from faceq.settings import Settings
from faceq.storage import Storage, open_storage
from producer import sources
from producer.progress import wait_for_job, workers_online
from producer.report import fetch_report
from producer.submit import new_job_id, submit

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
    attendance.add_argument("manifest", type=Path, help="CSV: record_id, employee_id, image, device_id, captured_at")
    attendance.add_argument("--gallery", help="verify each check-in against this enrolled gallery")
    attendance.add_argument("--top-k", type=int, default=0, help="with --gallery: list the K best 1:N candidates")
    _add_job_options(attendance, default_mode="crop")
    enroll = commands.add_parser("enroll", help="build a new version of an enrolment gallery")
    enroll.add_argument("manifest", type=Path, help="CSV: employee_id, image (several images per employee allowed)")
    enroll.add_argument("--gallery", required=True, help="gallery name")
    _add_job_options(enroll, default_mode="crop")
    report = commands.add_parser("report", help="fetch (or regenerate) a job's report.html")
    report.add_argument("job_id")
    report.add_argument("--out", type=Path, help="where to write it (default: <job_id>.html)")
    report.add_argument("--regenerate", action="store_true", help="render it again from the job's results")
    status = commands.add_parser("status", help="progress of a job as JSON (with its summary once done)")
    status.add_argument("job_id")
    commands.add_parser("workers", help="live workers from their heartbeats (device, batch settings, images/s)")
    wait = commands.add_parser("wait", help="wait for a job to finish, with progress")
    wait.add_argument("job_id")
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
    if not workers_online():
        print(f"warning: no faceq worker answers on {settings.broker_url}; the job waits until one starts",
              file=sys.stderr)
    result = wait_for_job(ledger, storage, job_id, timeout=args.timeout, show_progress=not args.no_progress)
    _print_summary(result.summary, storage)
    return 0


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    storage = open_storage(settings.storage_url, settings.s3_endpoint_url)
    ledger = Ledger.from_url(settings.broker_url)
    if args.command in ("audit", "attendance", "enroll"):
        job_id = args.job_id or new_job_id(args.command)
        if args.command == "audit" and args.source.startswith("s3://"):
            staged = sources.list_s3_prefix(args.source, settings.s3_endpoint_url)
            source = args.source
        else:
            if args.command == "audit":
                found, source = sources.list_directory(Path(args.source)), args.source
            else:
                read = sources.read_attendance_manifest if args.command == "attendance" else \
                    sources.read_enrolment_manifest
                found, source = read(args.manifest), str(args.manifest.resolve())
            staged = sources.stage(found, storage, job_id, progress=not args.no_progress)
        manifest = submit(
            settings, storage, ledger, kind=args.command, items=staged, source=source, job_id=job_id,
            chunk_size=args.chunk_size, mode=args.mode, all_faces=getattr(args, "all_faces", False),
            gallery=getattr(args, "gallery", None), top_k=getattr(args, "top_k", 0), baseline_job_id=args.baseline,
            report=not args.no_report,
        )
        print(f"job {job_id}: {len(manifest.items)} items in {manifest.n_chunks} chunk(s) queued on "
              f"'{settings.queue}'; manifest {storage.uri(jobs.manifest_key(job_id))}")
        return _wait(args, settings, storage, ledger, job_id) if args.wait else 0
    if args.command == "wait":
        return _wait(args, settings, storage, ledger, args.job_id)
    if args.command == "workers":
        print(json.dumps(read_heartbeats(ledger.redis), indent=2))
        return 0
    if args.command == "report":
        out = args.out or Path(f"{args.job_id}.html")
        out.write_bytes(fetch_report(storage, args.job_id, regenerate=args.regenerate))
        print(f"wrote {out}")
        return 0
    progress = ledger.progress(args.job_id)
    if progress is None:
        print(f"no job {args.job_id!r} on {settings.broker_url}", file=sys.stderr)
        return 2
    summary = json.loads(storage.get_bytes(jobs.summary_key(args.job_id))) if progress.complete else None
    print(json.dumps({**dataclasses.asdict(progress), "summary": summary}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except FaceqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
