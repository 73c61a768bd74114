"""The job model: items, the job header, chunk references, and where a job lives in storage.

Storage is a job's source of truth. Layout of one job::

    jobs/<id>/current.json                      {"run_id": …}: the run last planned (its commit point)
    jobs/<id>/runs/<run>/job.json               the run's header (kind, mode, counts, gallery, …)
    jobs/<id>/runs/<run>/manifest/chunk-00000.parquet   item_id, source_uri, manifest columns
    jobs/<id>/runs/<run>/inputs/…               local files uploaded for remote workers
    jobs/<id>/runs/<run>/results/part-00000.parquet     one part per chunk (deterministic name)
    jobs/<id>/runs/<run>/review.csv, report.html
    jobs/<id>/summary.json                      written last: names the completed run and its outputs

One-off calls (``client.compare`` / ``client.verify``, ``faceq compare a.jpg b.jpg``) have ids
starting with ``oneoff-`` and live under ``oneoff/<id>/`` instead: the same layout, out of the
``jobs/*/…`` globs that analysts read every job's parts with, and out of ``faceq jobs``.

A re-run of a job id plans a new run beside the old one; the old run's results stay readable
until the new run's summary replaces the old summary, then the old run is deleted. Messages
carry only (job id, run id, chunk index): a queued job costs Redis a few hundred bytes per
chunk whatever its size.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields

from faceq.errors import JobError

JOB_KINDS = ("audit", "attendance", "enroll", "compare")
MODES = ("crop", "detect")  # see models/preprocess.py
_SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,%d}$"


def validate_name(value: str, what: str, max_length: int = 128) -> str:
    """Names that become storage keys: no slashes, no surprises."""
    if not isinstance(value, str) or not re.match(_SAFE_NAME % (max_length - 1), value):
        raise JobError(f"{what} {value!r}: use 1-{max_length} letters, digits, '.', '_' or '-'")
    return value


def validate_job_id(job_id: str) -> str:
    return validate_name(job_id, "job id")


ONE_OFF_PREFIX = "oneoff-"  # ids of one-off calls: stored under oneoff/, hidden from listings


def is_one_off(job_id: str) -> bool:
    return job_id.startswith(ONE_OFF_PREFIX)


def job_prefix(job_id: str) -> str:
    """Where a job lives: one-off calls apart from the jobs people glob (the id says which, so
    a worker holding only (job, run, chunk) finds it)."""
    return f"{'oneoff' if is_one_off(job_id) else 'jobs'}/{job_id}/"


def current_run_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}current.json"


def runs_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}runs/"


def run_prefix(job_id: str, run_id: str) -> str:
    return f"{runs_prefix(job_id)}{run_id}/"


def header_key(job_id: str, run_id: str) -> str:
    return f"{run_prefix(job_id, run_id)}job.json"


def chunk_manifest_key(job_id: str, run_id: str, index: int) -> str:
    return f"{run_prefix(job_id, run_id)}manifest/chunk-{index:05d}.parquet"


def inputs_prefix(job_id: str, run_id: str) -> str:
    return f"{run_prefix(job_id, run_id)}inputs/"


def results_prefix(job_id: str, run_id: str) -> str:
    return f"{run_prefix(job_id, run_id)}results/"


def part_key(job_id: str, run_id: str, chunk_index: int) -> str:
    return f"{results_prefix(job_id, run_id)}part-{chunk_index:05d}.parquet"


def part_index(key: str) -> int | None:
    """The chunk index of a part key, or None for any other key."""
    match = re.search(r"/part-(\d+)\.parquet$", key)
    return int(match.group(1)) if match else None


def review_key(job_id: str, run_id: str) -> str:
    return f"{run_prefix(job_id, run_id)}review.csv"


def report_key(job_id: str, run_id: str) -> str:
    return f"{run_prefix(job_id, run_id)}report.html"


def summary_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}summary.json"


def latest_job_key(kind: str) -> str:
    """Points at the last finished job of a kind: the default baseline for drift alerts."""
    return f"jobs/_latest/{kind}.json"


@dataclass(frozen=True)
class Item:
    """One input image. ``fields`` carries manifest columns into the output (attendance)."""

    item_id: str
    source_uri: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkRef:
    """What a chunk message carries: a reference, never the items."""

    job_id: str
    run_id: str
    index: int

    def __str__(self) -> str:
        return f"{self.job_id}#{self.index}"


@dataclass(frozen=True)
class JobHeader:
    """``jobs/<id>/runs/<run>/job.json``: everything about a run except its items."""

    job_id: str
    run_id: str
    kind: str
    mode: str
    source: str
    created_at: str
    chunk_size: int
    n_items: int
    columns: tuple[str, ...] = ()  # manifest columns carried into the output (attendance: record_id, …)
    allowed_sources: tuple[str, ...] = ()  # roots this job's items may come from (besides the worker's own)
    model_weights: str | None = None
    all_faces: bool = False  # detect mode: one row per usable face instead of the largest only
    gallery: str | None = None  # attendance: the gallery matched against; enroll: the one built
    gallery_version: int | None = None  # attendance: fixed when the job is planned
    gallery_update: bool = False  # enroll: a delta on the current version (add/replace only these employees)
    top_k: int = 0  # attendance: also list the K best 1:N candidates
    baseline_job_id: str | None = None  # compare per-source quality with this job (default: the last one)
    report: bool = True  # write report.html (image jobs of one photo skip it: ~0.1 s of plotting each)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_items // self.chunk_size)

    def chunk_items(self, index: int) -> int:
        """How many items chunk ``index`` holds (every chunk is full but the last)."""
        return min(self.chunk_size, self.n_items - index * self.chunk_size)

    def chunk(self, index: int) -> ChunkRef:
        return ChunkRef(self.job_id, self.run_id, index)

    @property
    def verifies(self) -> bool:
        """Attendance against a gallery: rows carry decisions and similarities."""
        return self.kind == "attendance" and self.gallery is not None

    @property
    def decides(self) -> str | None:
        """Which decisions the rows carry: ``attendance`` (against a gallery), ``compare`` (pairs) or none."""
        if self.verifies:
            return "attendance"
        return "compare" if self.kind == "compare" else None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self) | {"n_chunks": self.n_chunks}, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "JobHeader":
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["columns"] = tuple(data.get("columns", ()))
        data["allowed_sources"] = tuple(data.get("allowed_sources", ()))
        return cls(**data)
