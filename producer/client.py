"""The Python client: submit jobs, follow them and read their results, in a few lines.

    from faceq import Client

    client = Client.from_env()                       # FACEQ_BROKER_URL, FACEQ_STORAGE_URL, …
    job = client.audit("/data/photos", mode="crop")
    job.wait(timeout=600)
    table = job.results()                            # pyarrow.Table (table.to_pandas())
    flagged = job.review()                           # list of dicts, one per flagged item
    row = client.verify("checkin.jpg", employee_id="e042", gallery="staff")
    row = client.compare("badge.jpg", "id-scan.jpg")   # same / different / grey_zone / …

No torch is imported on this side. Misconfiguration fails before anything is written: the
broker must answer, and live workers must use the same storage.
"""

from __future__ import annotations

import csv
import io
import itertools
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping

import pyarrow as pa
import redis

from faceq.job import spec as jobs
from faceq.storage.allow import AllowedSources, is_uri
from faceq.queue.broker import broker_problem, check_broker_url
from faceq.errors import ConfigError, JobError
from faceq.gallery import GalleryStore
from faceq.queue.heartbeats import read_heartbeats
from faceq.job.spec import JobHeader
from faceq.storage.localfiles import read_regular_file
from faceq.outputs.placeholder import marked
from faceq.job.ledger import JobProgress, Ledger
from faceq.redact import redact_url
from faceq.outputs.results import read_parquet
from faceq.settings import Settings
from faceq.storage.store import Storage, canonical_storage_url
from faceq.producer import sources
from faceq.producer.progress import finished_summary, wait_for_job
from faceq.producer.resume import current_header, resume
from faceq.producer.submit import JobOptions, new_job_id, submit
from faceq.producer.workermodes import mode_refusal


@dataclass
class Job:
    """A handle on one job id: its progress, its results once done."""

    client: "Client"
    job_id: str

    def status(self) -> JobProgress | None:
        """Progress from Redis (None once Redis has forgotten a finished job)."""
        return self.client.ledger.progress(self.job_id)

    def wait(self, timeout: float | None = None, show_progress: bool = False) -> dict:
        """Block until the summary is written; returns it. Raises JobError if the job cannot complete."""
        return wait_for_job(self.client.ledger, self.client.storage, self.job_id, timeout=timeout,
                            show_progress=show_progress).summary

    @property
    def summary(self) -> dict:
        summary = finished_summary(self.client.storage, self.job_id)
        if summary is None:
            raise JobError(f"job {self.job_id} is not finished: call wait() first")
        return summary

    def results(self) -> pa.Table:
        """Every result row of the finished run (one Parquet part per chunk, concatenated)."""
        storage = self.client.storage
        prefix = self.summary["outputs"]["results"]
        return pa.concat_tables(read_parquet(storage.get_bytes(key)) for key in storage.list_keys(prefix))

    def review(self) -> list[dict]:
        """The flagged items, as review.csv lists them."""
        data = self.client.storage.get_bytes(self.summary["outputs"]["review"]).decode("utf-8-sig")
        return list(csv.DictReader(io.StringIO(data)))

    def cancel(self) -> bool:
        """Stop a running job: workers drop its queued chunks. False if it was not running."""
        return self.client.ledger.cancel(self.job_id)

    def resume(self) -> "Job":
        resume(self.client.storage, self.client.ledger, self.job_id, self.client.settings.broker_url)
        return self

    def record_verdict(self, item_id: str, verdict: str, note: str = "", reviewer: str | None = None) -> dict:
        """A reviewer's verdict on one item of this finished job: ``confirmed``, ``rejected`` or
        ``retake``, with a note. Stored in jobs/<id>/verdicts.parquet (and the gallery's verdict
        index, so later reports show it beside the same employee). Returns the stored row."""
        from faceq.outputs import verdicts

        return verdicts.record(self.client.storage, self.job_id, item_id, verdict, note,
                               reviewer or default_reviewer(), lock=self.client.verdict_lock)

    def verdicts(self, latest: bool = False) -> list[dict]:
        """Every verdict recorded on this job, oldest first; ``latest``: only the newest per item."""
        from faceq.outputs import verdicts

        table = verdicts.read(self.client.storage, verdicts.job_verdicts_key(self.job_id))
        return list(verdicts.latest_per_item(table).values()) if latest else table.to_pylist()


class Client:
    """``Client()`` reads the environment; ``Client(broker=…, storage=…)`` overrides
    FACEQ_BROKER_URL / FACEQ_STORAGE_URL; ``Client(settings)`` takes a whole ``Settings``."""

    def __init__(self, settings: Settings | None = None, check: bool = True, *, broker: str | None = None,
                 storage: str | None = None):
        settings = settings or Settings.from_env()
        self.settings = replace(settings, broker_url=broker or settings.broker_url,
                                storage_url=storage or settings.storage_url)
        check_broker_url(self.settings.broker_url)  # a wrong scheme is one line, not a redis-py traceback
        self.storage: Storage = self.settings.open_storage()
        self.ledger: Ledger = self.settings.open_ledger()
        if check:
            self.check_broker()

    @classmethod
    def from_env(cls, broker: str | None = None, storage: str | None = None, check: bool = True) -> "Client":
        """Settings from the environment; ``broker`` / ``storage`` override FACEQ_BROKER_URL / FACEQ_STORAGE_URL."""
        return cls(Settings.from_env(), check=check, broker=broker, storage=storage)

    def check_broker(self) -> None:
        try:
            self.ledger.redis.ping()
        except redis.RedisError as exc:
            raise ConfigError(broker_problem(exc, self.settings.broker_url)) from None

    def check_workers_storage(self) -> None:
        """Refuse to submit when the live workers read another storage than this client writes."""
        mine = canonical_storage_url(self.storage.url)
        theirs = {beat.get("storage") for beat in read_heartbeats(self.ledger.redis) if beat.get("storage")}
        if theirs and mine not in theirs:
            raise ConfigError(f"this producer writes to {redact_url(mine)} but the live workers read "
                              f"{', '.join(sorted(theirs))}: set FACEQ_STORAGE_URL to the same storage on both sides")

    def check_workers_modes(self, mode: str) -> None:
        """Refuse to submit a ``mode`` job that no live worker serves (FACEQ_MODES on the workers)."""
        refusal = mode_refusal(mode, read_heartbeats(self.ledger.redis))
        if refusal:
            raise ConfigError(refusal)

    # -- submitting -------------------------------------------------------------------------

    def _submit(self, items: Iterable, source: str, roots: tuple[str, ...], job_id: str | None,
                options: JobOptions, progress: bool) -> Job:
        job_id = jobs.validate_job_id(job_id or new_job_id(options.kind))
        self.check_workers_storage()
        self.check_workers_modes(options.mode)
        submit(self.settings, self.storage, self.ledger, items=items, source=source, job_id=job_id, options=options,
               allowed_sources=roots, progress=progress)
        return Job(self, job_id)

    def audit(self, source: str | Path, *, mode: str = "detect", job_id: str | None = None, all_faces: bool = False,
              chunk_size: int | None = None, report: bool = True, baseline: str | None = None,
              progress: bool = False) -> Job:
        """Score every image under a local folder or an ``s3://`` prefix."""
        source = str(source)
        if source.startswith("s3://"):
            items, roots = sources.iter_s3_prefix(source, self.settings.s3_endpoint_url), (source,)
        else:
            root = Path(source).resolve()
            items, source, roots = sources.iter_directory(root), str(root), (root.as_uri(),)
        options = JobOptions("audit", mode=mode, chunk_size=chunk_size, all_faces=all_faces, report=report,
                             baseline_job_id=baseline)
        return self._submit(items, source, roots, job_id, options, progress)

    def attendance(self, manifest: str | Path | Iterable[Mapping[str, str]], *, gallery: str | None = None,
                   top_k: int = 0, mode: str = "crop", job_id: str | None = None, chunk_size: int | None = None,
                   report: bool = True, progress: bool = False) -> Job:
        """Check-ins from a CSV (path or ``s3://``) or from rows (dicts with record_id, employee_id,
        image, device_id, captured_at; images as paths or URIs)."""
        options = JobOptions("attendance", mode=mode, chunk_size=chunk_size, gallery=gallery, top_k=top_k,
                             report=report)
        return self._manifest_job(manifest, options, job_id, progress)

    def enroll(self, manifest: str | Path | Iterable[Mapping[str, str]], *, gallery: str, mode: str = "crop",
               job_id: str | None = None, progress: bool = False, update: bool = False) -> Job:
        """Build a new version of ``gallery`` from employee_id, image rows (CSV or dicts).
        ``update``: a delta on the current version — only the manifest's employees are added or
        replaced, every other employee is carried over unchanged."""
        return self._manifest_job(manifest, JobOptions("enroll", mode=mode, gallery=gallery, gallery_update=update),
                                  job_id, progress)

    def compare_pairs(self, manifest: str | Path | Iterable[Mapping[str, str]], *, mode: str = "crop",
                      job_id: str | None = None, chunk_size: int | None = None, report: bool = True,
                      progress: bool = False) -> Job:
        """Is the person on ``image_a`` the one on ``image_b``, for every pair of a CSV (path or
        ``s3://``) or of rows (dicts with pair_id, image_a, image_b and any extra columns)."""
        options = JobOptions("compare", mode=mode, chunk_size=chunk_size, report=report)
        return self._manifest_job(manifest, options, job_id, progress)

    def _manifest_job(self, manifest, options: JobOptions, job_id: str | None, progress: bool,
                      extra_roots: tuple[str, ...] = ()) -> Job:
        if not isinstance(manifest, (str, Path)):
            # rows from Python: relative images are relative to the working directory, which
            # (with the storage root and FACEQ_ALLOWED_SOURCES) is what such a job may read
            with tempfile.TemporaryDirectory(prefix="faceq-rows-") as tmp:
                path = Path(tmp) / "rows.csv"
                _write_rows(path, manifest)
                return self._manifest_job(path, options, job_id, progress, (Path.cwd().as_uri(), *extra_roots))
        if options.gallery and (options.kind == "attendance" or options.gallery_update) and \
                GalleryStore(self.storage).exists(options.gallery):
            GalleryStore(self.storage).check_mode(options.gallery, options.mode)  # crop vs detect: refused
        manifest = str(manifest)
        base = manifest.rsplit("/", 1)[0] + "/" if manifest.startswith("s3://") else \
            Path(manifest).resolve().parent.as_uri()
        roots = (base, *extra_roots, *self.settings.allowed_sources)
        allowed = AllowedSources.parse("", (*roots, self.storage.url))
        read = {"attendance": sources.iter_attendance_manifest, "compare": sources.iter_compare_manifest,
                "enroll": sources.iter_enrolment_manifest}[options.kind]
        items = read(manifest, allowed, s3_endpoint_url=self.settings.s3_endpoint_url)
        return self._submit(items, manifest, roots, job_id, options, progress)

    def image(self, image: str | Path | bytes, *, mode: str = "crop", job_id: str | None = None,
              one_off: bool = False, **fields: str) -> Job:
        """A one-image job (the worker still batches it with other jobs' images). Bytes are
        uploaded to storage first. ``one_off``: hidden from ``faceq jobs`` unless ``--all``, and
        stored under ``oneoff/`` (its id starts with ``oneoff-``)."""
        job_id = jobs.validate_job_id(job_id or new_job_id("image", one_off))
        uri = self._image_uri(image, job_id)
        row = {"record_id": fields.pop("record_id", "image"), "employee_id": fields.pop("employee_id", "-"),
               "image": uri, "device_id": fields.pop("device_id", ""), "captured_at": fields.pop("captured_at", "")}
        options = JobOptions("attendance", mode=mode, report=False, gallery=fields.pop("gallery", None),
                             one_off=one_off)
        return self._manifest_job([row], options, job_id, progress=False, extra_roots=(uri,))

    def _image_uri(self, image: str | Path | bytes, job_id: str) -> str:
        """The image's URI; bytes (and local files when storage is remote) are put in storage first."""
        if isinstance(image, (str, Path)) and is_uri(str(image)):
            return str(image)
        if not isinstance(image, bytes) and self.storage.is_local:
            return Path(image).resolve().as_uri()
        data = image if isinstance(image, bytes) else read_regular_file(Path(image).resolve(),
                                                                        self.settings.max_image_bytes)
        return self.storage.put_bytes(f"{jobs.job_prefix(job_id)}uploads/{uuid.uuid4().hex}", data)

    def verify(self, image: str | Path | bytes, employee_id: str, gallery: str, *, mode: str = "crop",
               timeout: float = 60, **fields: str) -> dict:
        """Kiosk-style 1:1 check: one photo against the claimed employee; returns the result row
        (decision, similarity, quality, review reasons, best 1:N candidate, ``embedding``), with
        ``random_weights`` and ``warning`` (None unless a placeholder model made it: then do not act
        on it). The job is a one-off: ``faceq jobs`` lists it only with ``--all``."""
        job = self.image(image, mode=mode, employee_id=employee_id, gallery=gallery, one_off=True,
                         job_id=new_job_id("verify", one_off=True), **fields)
        job.wait(timeout=timeout)
        (row,) = job.results().to_pylist()[:1]
        return marked(row)

    def compare(self, image_a: str | Path | bytes, image_b: str | Path | bytes, *, mode: str = "crop",
                timeout: float = 60, **fields: str) -> dict:
        """The seed's compare: two photos in, one row out (decision, similarity, both qualities,
        face counts and boxes, review reasons, both embeddings ``embedding`` / ``embedding_b``,
        ``random_weights`` and ``warning`` as for ``verify``). Paths, URIs or bytes. A one-off job,
        as for ``verify``."""
        job_id = jobs.validate_job_id(new_job_id("compare", one_off=True))
        uri_a, uri_b = self._image_uri(image_a, job_id), self._image_uri(image_b, job_id)
        row = {"pair_id": fields.pop("pair_id", "pair"), "image_a": uri_a, "image_b": uri_b, **fields}
        job = self._manifest_job([row], JobOptions("compare", mode=mode, report=False, one_off=True), job_id,
                                 progress=False, extra_roots=(uri_a, uri_b))
        job.wait(timeout=timeout)
        (row,) = job.results().to_pylist()
        return marked(row)

    # -- reading ----------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        jobs.validate_job_id(job_id)
        if self.ledger.progress(job_id) is None and current_header(self.storage, job_id) is None:
            raise JobError(f"no job {job_id!r} on {redact_url(self.settings.broker_url)} or in "
                           f"{redact_url(self.storage.url)}")
        return Job(self, job_id)

    def jobs(self, limit: int = 20, include_one_off: bool = False) -> list[JobProgress]:
        """Recent jobs Redis knows (within the ledger retention), newest first; one-off
        ``compare`` / ``verify`` calls only with ``include_one_off``."""
        return self.ledger.recent_jobs(limit, include_hidden=include_one_off)

    def galleries(self) -> dict[str, list[int]]:
        """Every gallery in storage and its versions."""
        store = GalleryStore(self.storage)
        return {name: store.versions(name) for name in self.storage.list_children("galleries/")}

    def header(self, job_id: str) -> JobHeader | None:
        return current_header(self.storage, job_id)

    # -- reviewing and maintaining galleries -------------------------------------------------

    def verdict_lock(self, name: str):
        """Serialises verdict appends to one object (the broker's lock)."""
        return self.ledger.redis.lock(f"faceq:verdict-lock:{name}", timeout=60, blocking_timeout=30)

    def gallery(self, name: str, version: int | None = None) -> dict:
        """How a gallery version was made (mode, model, kind, changes, …) and its employees."""
        store = GalleryStore(self.storage)
        info = store.info(name, version)
        return {**info, "versions": store.versions(name), "employees": store.employees(name, info["version"])}

    def enrolment_photos(self, name: str, employee_id: str, version: int | None = None) -> list[dict]:
        """The enrolment images of one employee in a gallery version (``used``: in the template)."""
        members = GalleryStore(self.storage).members(name, version, [employee_id])
        return sorted(members, key=lambda m: (not m["used"], -(m["quality"] or 0.0)))

    def remove_employees(self, name: str, employee_ids: Iterable[str], by: str | None = None) -> dict:
        """A new version of ``name`` without ``employee_ids``; returns what it records."""
        with self.ledger.redis.lock(f"faceq:gallery-lock:{name}", timeout=300, blocking_timeout=60):
            return GalleryStore(self.storage).remove(name, list(employee_ids), by=by or default_reviewer())


def default_reviewer() -> str:
    """FACEQ_REVIEWER, else the login name."""
    import getpass
    import os

    try:
        return os.environ.get("FACEQ_REVIEWER") or getpass.getuser()
    except Exception:  # no login name (containers)
        return ""


def _write_rows(path: Path, rows: Iterable[Mapping[str, str]]) -> None:
    """Rows as a CSV manifest, relative images made absolute against the working directory."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        raise JobError("a job needs at least one row")
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(first))
        writer.writeheader()
        for row in itertools.chain([first], rows):
            writer.writerow({column: _absolute_image(value) if column in _IMAGE_COLUMNS else value
                             for column, value in row.items()})


_IMAGE_COLUMNS = ("image", "image_a", "image_b")


def _absolute_image(value) -> str:
    image = str(value or "")
    return str(Path(image).absolute()) if image and not is_uri(image) else image


