"""Enrolment galleries: build templates from enrolment rows, publish immutable versions.

Layout in storage::

    galleries/<name>/v<N>/gallery.parquet   employee_id, template, n_images, mean_quality, model_id
    galleries/<name>/v<N>/enrolment.json    rejected images (with reasons), employees left
                                            without a usable image, likely duplicate identities
    galleries/<name>/current.json           {"version": N}: what new attendance jobs match against

A template is the quality-weighted mean of an employee's enrolment embeddings whose quality
passes the enrolment threshold, re-normalised to unit length. Versions are never rewritten.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from faceq.errors import JobError
from faceq.jobs import validate_name
from faceq.results import read_parquet
from faceq.storage import Storage

EMBEDDING_DIM = 512

GALLERY_SCHEMA = pa.schema([
    ("employee_id", pa.string()),
    ("template", pa.list_(pa.float32(), EMBEDDING_DIM)),
    ("n_images", pa.int32()),
    ("mean_quality", pa.float32()),
    ("model_id", pa.string()),
])


def validate_gallery_name(name: str) -> str:
    return validate_name(name, "gallery name", max_length=64)


def _prefix(name: str) -> str:
    return f"galleries/{name}/"


@dataclass(frozen=True)
class Gallery:
    name: str
    version: int
    employee_ids: list[str]
    templates: np.ndarray  # (n, 512) float32, unit rows
    mean_quality: np.ndarray  # (n,) float32
    model_id: str

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def index(self) -> dict[str, int]:
        return {employee: i for i, employee in enumerate(self.employee_ids)}


@dataclass(frozen=True)
class Enrolment:
    """Templates plus what a person needs to fix the enrolment."""

    table: pa.Table
    rejected: list[dict]
    without_usable_image: list[str]
    duplicates: list[dict]


class EnrolmentBuilder:
    """Templates accumulated part by part: per employee, the quality-weighted sum of the usable
    embeddings (512 floats), never the rows themselves."""

    def __init__(self, enrol_quality: float):
        self.enrol_quality = enrol_quality
        self.rejected: list[dict] = []
        self._sums: dict[str, np.ndarray] = {}
        self._weights: dict[str, list[float]] = {}

    def add(self, rows: list[dict]) -> None:
        """``rows``: enrolment results (employee_id, item_id, status, error, quality, embedding)."""
        for row in rows:
            employee = row["employee_id"]
            self._weights.setdefault(employee, [])
            if row["status"] != "ok":
                reason = row["error"] if row["status"] == "error" else row["status"]
                self.rejected.append({"employee_id": employee, "item_id": row["item_id"], "reason": reason})
            elif row["quality"] < self.enrol_quality:
                self.rejected.append({"employee_id": employee, "item_id": row["item_id"],
                                      "reason": f"low_quality: {row['quality']:.3f} < {self.enrol_quality}"})
            else:
                vector = row["quality"] * np.asarray(row["embedding"], dtype=np.float64)
                self._sums[employee] = self._sums.get(employee, 0.0) + vector
                self._weights[employee].append(row["quality"])

    def build(self, duplicate_similarity: float, model_id: str) -> "Enrolment":
        employees, templates, counts, qualities = [], [], [], []
        for employee in sorted(self._sums):
            template = self._sums[employee]
            employees.append(employee)
            templates.append((template / np.linalg.norm(template)).astype(np.float32))
            counts.append(len(self._weights[employee]))
            qualities.append(float(np.mean(self._weights[employee])))
        table = pa.table(
            {"employee_id": employees, "template": templates, "n_images": counts, "mean_quality": qualities,
             "model_id": [model_id] * len(employees)},
            schema=GALLERY_SCHEMA,
        )
        without = sorted(e for e, weights in self._weights.items() if not weights)
        matrix = np.stack(templates) if templates else np.zeros((0, EMBEDDING_DIM), np.float32)
        return Enrolment(table, self.rejected, without, likely_duplicates(employees, matrix, duplicate_similarity))


def build_enrolment(rows: list[dict], enrol_quality: float, duplicate_similarity: float, model_id: str) -> Enrolment:
    """Templates from enrolment rows held in memory (see ``EnrolmentBuilder``)."""
    builder = EnrolmentBuilder(enrol_quality)
    builder.add(rows)
    return builder.build(duplicate_similarity, model_id)


def likely_duplicates(employees: list[str], templates: np.ndarray, threshold: float, limit: int = 100) -> list[dict]:
    """Pairs of different employee ids whose templates are closer than ``threshold``, closest first."""
    if len(employees) < 2:
        return []
    similarity = templates @ templates.T
    first, second = np.triu_indices(len(employees), k=1)
    close = similarity[first, second] > threshold
    pairs = sorted(zip(similarity[first, second][close], first[close], second[close]), reverse=True)[:limit]
    return [{"employee_a": employees[a], "employee_b": employees[b], "similarity": round(float(s), 4)}
            for s, a, b in pairs]


class GalleryStore:
    def __init__(self, storage: Storage):
        self.storage = storage

    def versions(self, name: str) -> list[int]:
        found = {int(m.group(1)) for key in self.storage.list_keys(_prefix(name))
                 if (m := re.match(rf"{re.escape(_prefix(name))}v(\d+)/gallery\.parquet$", key))}
        return sorted(found)

    def current_version(self, name: str) -> int:
        key = f"{_prefix(validate_gallery_name(name))}current.json"
        if not self.storage.exists(key):
            raise JobError(f"no gallery {name!r} in {self.storage.url}: enrol it first (python -m producer enroll)")
        return int(json.loads(self.storage.get_bytes(key))["version"])

    def publish(self, name: str, enrolment: Enrolment, report: dict) -> int:
        """Write a new version and point ``current`` at it. Callers serialise per gallery name."""
        version = (self.versions(name) or [0])[-1] + 1
        base = f"{_prefix(name)}v{version}/"
        sink = io.BytesIO()
        pq.write_table(enrolment.table, sink)
        self.storage.put_bytes(base + "gallery.parquet", sink.getvalue())
        self.storage.put_bytes(base + "enrolment.json", json.dumps(report, indent=2).encode(), "application/json")
        self.storage.put_bytes(f"{_prefix(name)}current.json", json.dumps({"version": version}).encode(),
                               "application/json")
        return version

    def load(self, name: str, version: int) -> Gallery:
        key = f"{_prefix(name)}v{version}/gallery.parquet"
        table = read_parquet(self.storage.get_bytes(key))
        model_ids = set(table.column("model_id").to_pylist())
        if len(model_ids) > 1:
            raise JobError(f"gallery {name}@v{version} mixes model ids {sorted(model_ids)}")
        templates = np.array(table.column("template").combine_chunks().flatten(), dtype=np.float32)
        return Gallery(
            name=name,
            version=version,
            employee_ids=table.column("employee_id").to_pylist(),
            templates=templates.reshape(-1, EMBEDDING_DIM),
            mean_quality=np.array(table.column("mean_quality").to_numpy(), dtype=np.float32),
            model_id=model_ids.pop() if model_ids else "",
        )
