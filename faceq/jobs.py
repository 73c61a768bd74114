"""The job model: items, chunks, the manifest, and where a job's objects live in storage.

Messages carry item references (URIs and ids), never image bytes. Every name here is
deterministic so that a redelivered chunk overwrites its own output instead of adding to it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from faceq.errors import JobError

JOB_KINDS = ("audit", "attendance", "enroll")
MODES = ("crop", "detect")  # see models/preprocess.py
_SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,%d}$"


def validate_name(value: str, what: str, max_length: int = 128) -> str:
    """Names that become storage keys: no slashes, no surprises."""
    if not re.match(_SAFE_NAME % (max_length - 1), value):
        raise JobError(f"{what} {value!r}: use 1-{max_length} letters, digits, '.', '_' or '-'")
    return value


def validate_job_id(job_id: str) -> str:
    return validate_name(job_id, "job id")


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/manifest.json"


def results_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/results/"


def part_key(job_id: str, chunk_index: int) -> str:
    return f"{results_prefix(job_id)}part-{chunk_index:05d}.parquet"


def summary_key(job_id: str) -> str:
    return f"jobs/{job_id}/summary.json"


def review_key(job_id: str) -> str:
    return f"jobs/{job_id}/review.csv"


def inputs_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/inputs/"


def report_key(job_id: str) -> str:
    return f"jobs/{job_id}/report.html"


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
class ChunkSpec:
    """The payload of one chunk task: everything a worker needs, as plain JSON."""

    job_id: str
    run_id: str
    kind: str
    index: int
    mode: str
    items: tuple[Item, ...]
    all_faces: bool = False  # detect mode: one row per usable face instead of the largest only
    gallery: str | None = None  # attendance: match against this gallery …
    gallery_version: int | None = None  # … at this version (fixed when the job is planned)
    top_k: int = 0  # attendance: also list the K best 1:N candidates

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> "ChunkSpec":
        items = tuple(Item(**item) for item in data["items"])
        return cls(**{**data, "items": items})


@dataclass(frozen=True)
class JobManifest:
    """Written to ``jobs/<id>/manifest.json`` before anything is enqueued."""

    job_id: str
    run_id: str
    kind: str
    mode: str
    source: str
    created_at: str
    chunk_size: int
    items: tuple[Item, ...]
    model_weights: str | None = None
    all_faces: bool = False
    gallery: str | None = None  # attendance: the gallery matched against; enroll: the one built
    gallery_version: int | None = None
    top_k: int = 0
    baseline_job_id: str | None = None  # compare per-source quality with this job (default: the last one)
    report: bool = True  # write report.html (image jobs of one photo skip it: ~0.1 s of plotting each)

    @property
    def n_chunks(self) -> int:
        return -(-len(self.items) // self.chunk_size)

    def chunks(self) -> list[ChunkSpec]:
        return [
            ChunkSpec(
                job_id=self.job_id,
                run_id=self.run_id,
                kind=self.kind,
                index=index,
                mode=self.mode,
                items=self.items[index * self.chunk_size : (index + 1) * self.chunk_size],
                all_faces=self.all_faces,
                gallery=self.gallery if self.kind == "attendance" else None,
                gallery_version=self.gallery_version if self.kind == "attendance" else None,
                top_k=self.top_k,
            )
            for index in range(self.n_chunks)
        ]

    def to_json(self) -> bytes:
        data = asdict(self) | {"n_items": len(self.items), "n_chunks": self.n_chunks}
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "JobManifest":
        data = json.loads(raw)
        data.pop("n_items", None)
        data.pop("n_chunks", None)
        data["items"] = tuple(Item(**item) for item in data["items"])
        return cls(**data)
