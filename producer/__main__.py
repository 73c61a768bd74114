"""``faceq`` (or ``python -m faceq.producer``): submit audit, attendance, enrolment and compare jobs, follow
them, read their results. Built on the Python client (``from faceq import Client``).

Commands that only read (status, jobs, report, …) give up within seconds when storage or the
broker does not answer; waiting (wait, --wait, resume) and workers ride out long outages.

Exit codes: 0 done; 1 an error (the job cannot complete, was cancelled, is unknown, or a
setting is wrong — one line on stderr says which); 2 a malformed command line; 3 Redis lost
the job's state (``resume JOB_ID`` rebuilds it from storage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis

import faceq
from faceq.job import spec as jobs
from faceq.queue.broker import broker_problem
from faceq.errors import FaceqError, JobError
from faceq.queue.heartbeats import read_heartbeats
from faceq.job.ledger import JobProgress
from faceq.redact import install_log_redaction, redact_text, redact_url
from faceq.retry import REDIS_ERRORS, retry_call
from faceq.settings import ENV_VARS, Settings
from faceq.storage.store import Storage
from faceq.outputs.placeholder import is_random, warning_for
from faceq.producer import models_command
from faceq.producer.client import Client, Job
from faceq.producer.progress import JobStateLost, finished_summary, lost_state_message, workers_online
from faceq.producer.report import fetch_report
from faceq.producer.resume import current_header
from faceq.producer.suggest import SuggestingParser
from faceq.producer.tables import jobs_table, status_lines

log = logging.getLogger("producer")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_STATE_LOST = 0, 1, 2, 3
STATUS_RETRY_SECONDS = 30
# storage outages a reading command rides out (workers and waiting: FACEQ_STORAGE_RETRY_SECONDS)
INTERACTIVE_STORAGE_RETRY_SECONDS = 5.0
_ENV_HELP = ("environment: " + ", ".join(ENV_VARS) + " and the standard AWS_* variables (see the README's "
             "Configuration). {today} and {yesterday} (UTC dates) are replaced in job ids, sources and manifests.")


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


def build_parser(prog: str = "faceq") -> argparse.ArgumentParser:
    parser = SuggestingParser(prog=prog, description=__doc__, epilog=_ENV_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"faceq {faceq.__version__}")
    parser.add_argument("--broker", help="Redis URL (overrides FACEQ_BROKER_URL)")
    parser.add_argument("--storage", help="file:///abs/dir or s3://bucket/prefix (overrides FACEQ_STORAGE_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="score every image under a directory or s3:// prefix", epilog=_ENV_HELP)
    audit.add_argument("source", help="local directory or s3://bucket/prefix")
    audit.add_argument("--all-faces", action="store_true", help="detect mode: a row for every face, not only the largest")
    _add_job_options(audit, default_mode="detect")
    attendance = commands.add_parser("attendance", help="score the check-in photos of an attendance manifest",
                                     epilog=_ENV_HELP)
    attendance.add_argument("manifest", help="CSV (local or s3://): record_id, employee_id, image, device_id, captured_at")
    attendance.add_argument("--gallery", help="verify each check-in against this enrolled gallery")
    attendance.add_argument("--top-k", type=int, default=0, help="with --gallery: list the K best 1:N candidates")
    _add_job_options(attendance, default_mode="crop")
    enroll = commands.add_parser("enroll", help="build a new version of an enrolment gallery", epilog=_ENV_HELP)
    enroll.add_argument("manifest", help="CSV (local or s3://): employee_id, image (several images per employee allowed)")
    enroll.add_argument("--gallery", required=True, help="gallery name")
    enroll.add_argument("--update", action="store_true",
                        help="delta enrolment: a new version that adds or replaces only this manifest's employees "
                             "and carries every other employee over unchanged")
    _add_job_options(enroll, default_mode="crop")
    compare = commands.add_parser("compare", help="are two photos (or each pair of a manifest) the same person?",
                                  epilog=_ENV_HELP)
    compare.add_argument("inputs", nargs="+", metavar="MANIFEST | PHOTO_A PHOTO_B",
                         help="two photos (paths or URIs: waits and prints the result row as JSON), or a CSV "
                              "(local or s3://): pair_id, image_a, image_b (extra columns are kept)")
    _add_job_options(compare, default_mode="crop")
    report = commands.add_parser("report", help="fetch (or regenerate) a job's report.html")
    report.add_argument("job_id")
    report.add_argument("--out", type=Path, help="where to write it (default: <job_id>.html)")
    report.add_argument("--regenerate", action="store_true", help="render it again from the job's results")
    status = commands.add_parser("status", help="a job's state, progress, counts and outputs")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="the full record as JSON (with the summary once done)")
    wait = commands.add_parser("wait", help="wait for a job to finish, with progress")
    wait.add_argument("job_id")
    wait.add_argument("--resume", action="store_true", help="if Redis lost the job's state, resume it from storage")
    _add_wait_options(wait)
    resume_cmd = commands.add_parser("resume", help="rebuild a job's state from storage and run only the chunks "
                                                    "without results (after a Redis loss or fixed failures)")
    resume_cmd.add_argument("job_id")
    _add_wait_options(resume_cmd, "--wait")
    cancel = commands.add_parser("cancel", help="cancel a running job (workers drop its queued chunks)")
    cancel.add_argument("job_id")
    listing = commands.add_parser("jobs", help="recent jobs: state, progress, counts, age")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--all", action="store_true", help="also the one-off calls (client.compare / verify)")
    listing.add_argument("--json", action="store_true", help="as JSON, for scripts")
    commands.add_parser("workers", help="live workers from their heartbeats (device, batch settings, images/s)")
    commands.add_parser("galleries", help="enrolment galleries and their versions, as JSON")
    _add_review_commands(commands)
    models_command.add_parser(commands)
    return parser


def _nfc(value: str) -> str:
    """An employee id as the gallery stores it (Unicode NFC, faceq.job.ids)."""
    return unicodedata.normalize("NFC", value)


def _add_review_commands(commands) -> None:
    """verdict, verdicts and gallery show / photos / remove (the review loop and gallery upkeep)."""
    from faceq.outputs.verdicts import VERDICTS

    verdict = commands.add_parser("verdict", help="record a reviewer's verdict on one item of a finished job")
    verdict.add_argument("job_id")
    verdict.add_argument("item_id", help="the item (attendance: the record_id), as in review.csv")
    verdict.add_argument("verdict", choices=VERDICTS)
    verdict.add_argument("--note", default="", help="why (shown beside later flags of the same employee)")
    verdict.add_argument("--reviewer", help="who decided (default: FACEQ_REVIEWER, else the login name)")
    review = commands.add_parser("review", help="a local page to work through a job's review queue and record "
                                                "verdicts (127.0.0.1 only; Ctrl-C stops it)")
    review.add_argument("job_id")
    review.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    review.add_argument("--reviewer", help="who decides (default: FACEQ_REVIEWER, else the login name)")
    verdicts = commands.add_parser("verdicts", help="the verdicts recorded on a job, as JSON")
    verdicts.add_argument("job_id")
    verdicts.add_argument("--latest", action="store_true", help="only the newest verdict per item")
    gallery = commands.add_parser("gallery", help="show a gallery, an employee's enrolment photos, remove employees")
    actions = gallery.add_subparsers(dest="gallery_command", required=True)
    show = actions.add_parser("show", help="a gallery version (mode, model, changes) and its employees, as JSON")
    show.add_argument("name")
    show.add_argument("--version", type=int, help="default: the current version")
    photos = actions.add_parser("photos", help="an employee's enrolment photos (URIs; --out: a page with them)")
    photos.add_argument("name")
    photos.add_argument("employee_id", type=_nfc)
    photos.add_argument("--version", type=int, help="default: the current version")
    photos.add_argument("--out", type=Path, help="write an HTML page with the photos")
    remove = actions.add_parser("remove", help="a new gallery version without these employees")
    remove.add_argument("name")
    remove.add_argument("employee_ids", nargs="+", metavar="EMPLOYEE", type=_nfc)


def expand_dates(value: str | None, now: datetime | None = None) -> str | None:
    """``{today}`` / ``{yesterday}`` → UTC dates (YYYY-MM-DD): one command line for every night."""
    if value is None:
        return None
    now = now or datetime.now(timezone.utc)
    return value.replace("{today}", f"{now:%Y-%m-%d}").replace("{yesterday}", f"{now - timedelta(days=1):%Y-%m-%d}")


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat() if timestamp else None


def _progress_json(progress: JobProgress) -> dict:
    data = dataclasses.asdict(progress)
    data["created_at"], data["finished_at"] = _iso(progress.created_at), _iso(progress.finished_at)
    return data


def _print_summary(summary: dict, storage: Storage) -> None:
    counts = summary["counts"]
    warning = warning_for(summary["model_ids"])
    print(f"job {summary['job_id']} done: {summary['n_rows']} rows for {summary['n_items']} items")
    if warning:  # first, where a person looks, and again last
        print(f"  {warning}")
    print(f"  status:       {json.dumps(counts['status'])}")
    print(f"  needs review: {counts['needs_review']}  reasons: {json.dumps(counts['review_reasons'])}")
    median = summary["quality"]["median"]
    print(f"  quality:      median {'—' if median is None else f'{median:.2f}'}  "
          f"(model {', '.join(summary['model_ids'])}{', a placeholder' if warning else ''})")
    timings = summary["timings"]
    print(f"  throughput:   {timings['items_per_second']} items/s over "
          f"{timings.get('running_seconds', timings['wall_seconds'])}s")
    print(f"  results:      {storage.uri(summary['outputs']['results'])}")
    print(f"  review list:  {storage.uri(summary['outputs']['review'])}")
    print(f"  summary:      {storage.uri(jobs.summary_key(summary['job_id']))}")
    if isinstance(summary.get("gallery"), dict):
        gallery = summary["gallery"]
        print(f"  gallery:      {gallery['name']} v{gallery['version']}: {gallery['enrolled']} employees enrolled, "
              f"{len(gallery['rejected_images'])} images rejected, "
              f"{len(gallery['employees_without_usable_image'])} employees without a usable image, "
              f"{len(gallery['likely_duplicates'])} likely duplicate pairs")
        if gallery.get("kind") == "delta":
            changes = gallery["changes"]
            print(f"  changes:      against v{gallery['base_version']}: " + ", ".join(
                f"{what} {', '.join(changes[what])}" for what in ("added", "updated", "kept_previous")
                if changes[what]) + f"; {changes['unchanged']} unchanged")
    if "decision" in summary["counts"]:
        print(f"  decisions:    {json.dumps(summary['counts']['decision'])}")
    for alert in summary["alerts"]:
        print(f"  ALERT:        {alert['message']}")
    for warning in summary.get("warnings") or []:
        print(f"  WARNING:      {warning}")
    if storage.exists(summary["outputs"]["report"]):
        print(f"  report:       {storage.uri(summary['outputs']['report'])}")
    if warning:
        print(f"  WARNING: {warning}")


def _wait(args, client: Client, job: Job) -> int:
    try:
        if not workers_online(client.ledger):
            print(f"warning: no faceq worker answers on {redact_url(client.settings.broker_url)}; the job waits "
                  f"until one starts", file=sys.stderr)
    except Exception as exc:  # the broker is down: waiting says so and keeps trying
        log.debug("ping failed: %s", exc)
    from faceq.producer.progress import wait_for_job

    def follow() -> dict:
        return wait_for_job(client.ledger, client.storage, job.job_id, timeout=args.timeout,
                            show_progress=not args.no_progress,
                            notify=lambda message: print(message, file=sys.stderr)).summary

    try:
        summary = follow()
    except JobStateLost:
        if not getattr(args, "resume", False):
            raise
        job.resume()
        print(f"job {job.job_id}: state rebuilt from storage and resumed", file=sys.stderr)
        summary = follow()
    _print_summary(summary, client.storage)
    return EXIT_OK


def _submit(args, client: Client) -> Job:
    job_id = expand_dates(args.job_id)
    progress = not args.no_progress
    if args.command == "audit":
        return client.audit(expand_dates(args.source), mode=args.mode, job_id=job_id, all_faces=args.all_faces,
                            chunk_size=args.chunk_size, report=not args.no_report, baseline=args.baseline,
                            progress=progress)
    manifest = expand_dates(getattr(args, "manifest", None))
    if args.command == "attendance":
        return client.attendance(manifest, gallery=args.gallery, top_k=args.top_k, mode=args.mode, job_id=job_id,
                                 chunk_size=args.chunk_size, report=not args.no_report, progress=progress)
    if args.command == "compare":
        return client.compare_pairs(expand_dates(args.inputs[0]), mode=args.mode, job_id=job_id,
                                    chunk_size=args.chunk_size, report=not args.no_report, progress=progress)
    return client.enroll(manifest, gallery=args.gallery, mode=args.mode, job_id=job_id, progress=progress,
                         update=args.update)


SUBMIT_COMMANDS = ("audit", "attendance", "enroll", "compare")


def run(args: argparse.Namespace) -> int:
    if args.command == "models":  # no broker, no storage: the first thing a new user runs
        return models_command.run(args)
    # submitting checks the broker before writing anything; following a job rides out outages
    client = Client(_settings(args), broker=args.broker, storage=args.storage,
                    check=args.command in SUBMIT_COMMANDS)
    storage = client.storage
    if args.command == "compare" and len(args.inputs) != 1:
        return _compare_two(args, client)
    if args.command in SUBMIT_COMMANDS:
        job = _submit(args, client)
        header = client.header(job.job_id)
        print(f"job {job.job_id}: {header.n_items} items in {header.n_chunks} chunk(s) queued on "
              f"'{client.settings.queue}'; plan {storage.uri(jobs.header_key(job.job_id, header.run_id))}")
        return _wait(args, client, job) if args.wait else EXIT_OK
    if args.command == "wait":
        return _wait(args, client, Job(client, args.job_id))
    if args.command == "resume":
        return _resume(args, client)
    if args.command == "cancel":
        if not client.job(args.job_id).cancel():
            raise JobError(f"job {args.job_id} is not running: nothing to cancel")
        print(f"job {args.job_id} cancelled: workers drop its queued chunks")
        return EXIT_OK
    if args.command == "jobs":
        listing = client.jobs(args.limit, include_one_off=args.all)
        print(json.dumps([_progress_json(p) for p in listing], indent=2) if args.json else jobs_table(listing))
        return EXIT_OK
    if args.command == "workers":
        print(json.dumps(read_heartbeats(client.ledger.redis), indent=2))
        return EXIT_OK
    if args.command == "galleries":
        print(json.dumps(client.galleries(), indent=2))
        return EXIT_OK
    if args.command in ("verdict", "verdicts", "gallery", "review"):
        return _review_command(args, client)
    if args.command == "report":
        out = args.out or Path(f"{args.job_id}.html")
        out.write_bytes(fetch_report(storage, args.job_id, regenerate=args.regenerate))
        print(f"wrote {out}")
        return EXIT_OK
    return _status(client, args.job_id, args.json)


def _settings(args) -> Settings:
    """The environment's settings; a command that only reads gives up on storage within seconds."""
    settings = Settings.from_env()
    if not _only_reads(args):
        return settings
    return dataclasses.replace(settings, storage_retry_seconds=min(settings.storage_retry_seconds,
                                                                   INTERACTIVE_STORAGE_RETRY_SECONDS))


def _only_reads(args) -> bool:
    """A command a person types and reads at once (not one that submits, waits or resumes)."""
    return not (args.command in (*SUBMIT_COMMANDS, "wait", "resume", "models") or getattr(args, "wait", False))


def _compare_two(args, client: Client) -> int:
    """``faceq compare a.jpg b.jpg``: one pair, waited for, its row printed (as ``client.compare``)."""
    if len(args.inputs) != 2:
        raise JobError(f"compare takes a manifest or two photos, not {len(args.inputs)} arguments")
    row = client.compare(*(expand_dates(path) for path in args.inputs), mode=args.mode,
                         timeout=args.timeout or 120)
    shown = {key: value for key, value in row.items() if key not in ("embedding", "embedding_b")}
    print(json.dumps(shown, indent=2, default=str))
    if row.get("warning"):
        print(f"warning: {row['warning']}", file=sys.stderr)
    return EXIT_OK


def _review_command(args, client: Client) -> int:
    if args.command == "verdict":
        row = client.job(args.job_id).record_verdict(args.item_id, args.verdict, args.note, args.reviewer)
        print(json.dumps(row, indent=2, default=str))
        return EXIT_OK
    if args.command == "verdicts":
        print(json.dumps(client.job(args.job_id).verdicts(latest=args.latest), indent=2, default=str))
        return EXIT_OK
    if args.command == "review":
        from faceq.producer.review_server import ReviewServer

        server = ReviewServer(client, args.job_id, port=args.port, reviewer=args.reviewer)
        print(f"review page for job {args.job_id}: {server.url}  (only this URL works; Ctrl-C stops it)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.httpd.server_close()
        return EXIT_OK
    if args.gallery_command == "show":
        print(json.dumps(client.gallery(args.name, args.version), indent=2, default=str))
        return EXIT_OK
    if args.gallery_command == "photos":
        from faceq.gallery import GalleryStore

        store = GalleryStore(client.storage)
        version = store.info(args.name, args.version)  # one version named on the page and read below
        photos = client.enrolment_photos(args.name, args.employee_id, version["version"])
        if not photos:
            raise JobError(f"gallery {args.name} records no enrolment photo of {args.employee_id!r}")
        if args.out:
            from faceq.outputs.report import enrolment_photos_page

            args.out.write_text(enrolment_photos_page(client.storage, args.name, args.employee_id, photos, version,
                                                      store.current_version(args.name)))
            print(f"wrote {args.out}")
        print(json.dumps(photos, indent=2, default=str))
        return EXIT_OK
    result = client.remove_employees(args.name, args.employee_ids)
    print(f"gallery {args.name} v{result['version']}: removed {', '.join(result['changes']['removed'])}; "
          f"{result['n_employees']} employees remain (v{result['base_version']} is kept unchanged)")
    return EXIT_OK


def _resume(args, client: Client) -> int:
    from faceq.producer.resume import resume

    resumed = resume(client.storage, client.ledger, args.job_id, client.settings.broker_url)
    if resumed.already_complete:
        print(f"job {args.job_id} is already complete: {client.storage.uri(jobs.summary_key(args.job_id))}")
        return EXIT_OK
    print(f"job {args.job_id}: {resumed.chunks_with_parts} of {resumed.header.n_chunks} chunks have results; "
          f"{resumed.chunks_enqueued} enqueued" + ("" if resumed.chunks_enqueued else ", finalize enqueued"))
    return _wait(args, client, Job(client, args.job_id)) if args.wait else EXIT_OK


def _status(client: Client, job_id: str, as_json: bool = False) -> int:
    def notify(state) -> None:
        print(f"broker {redact_url(client.settings.broker_url)} unreachable; retrying", file=sys.stderr)

    progress = retry_call(lambda: client.ledger.progress(job_id), "status", STATUS_RETRY_SECONDS,
                          lambda exc: isinstance(exc, REDIS_ERRORS), on_retry=notify)
    summary = finished_summary(client.storage, job_id, progress.run_id if progress else None)
    if progress is None and summary is None:
        if current_header(client.storage, job_id) is not None:
            raise JobStateLost(lost_state_message(job_id))
        raise JobError(f"no job {job_id!r} on {redact_url(client.settings.broker_url)} or in "
                       f"{redact_url(client.storage.url)}")
    state = _progress_json(progress) if progress else {"job_id": job_id, "state": "done",
                                                       "note": "finished; Redis has forgotten it (retention)"}
    warning = warning_for(summary["model_ids"]) if summary else None
    flags = {"random_weights": any(is_random(m) for m in summary["model_ids"]), "warning": warning} if warning else {}
    if as_json:
        print(json.dumps({**state, **flags, "summary": summary}, indent=2))
    else:
        print("\n".join(status_lines(job_id, progress, summary, client.storage.uri, warning)))
    return EXIT_OK


def main(argv: list[str] | None = None, prog: str = "faceq") -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    args = build_parser(prog).parse_args(argv)
    if _only_reads(args):  # its answer, or one line why not: no retry chatter (faceq.retry) on the way
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("faceq.retry").setLevel(logging.ERROR)
    for flag, name in ((args.broker, "FACEQ_BROKER_URL"), (args.storage, "FACEQ_STORAGE_URL")):
        if flag:  # the Celery app (pings, Flower names) reads the environment too
            os.environ[name] = flag
    try:
        return run(args)
    except JobStateLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STATE_LOST
    except FaceqError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except REDIS_ERRORS as exc:
        print(f"error: the broker is unreachable ({redact_text(str(exc))}); is Redis running at "
              f"{redact_url(_broker_url(args))}?", file=sys.stderr)
        return EXIT_ERROR
    except redis.RedisError as exc:  # a database that does not exist, refused credentials, …
        print(f"error: {broker_problem(exc, _broker_url(args))}", file=sys.stderr)
        return EXIT_ERROR


def _broker_url(args) -> str:
    try:
        return args.broker or Settings.from_env().broker_url
    except FaceqError:
        return os.environ.get("FACEQ_BROKER_URL", "?")


if __name__ == "__main__":
    sys.exit(main(prog="python -m faceq.producer"))
