"""Enrolment galleries: build templates from enrolment rows, publish immutable versions.

Layout in storage::

    galleries/<name>/v<N>/gallery.parquet   employee_id, template, n_images, mean_quality, model_id
    galleries/<name>/v<N>/members.parquet   one row per enrolment image of the version's employees:
                                            employee_id, item_id, source_uri, quality, used, job_id
                                            (which photos built each template)
    galleries/<name>/v<N>/enrolment.json    how the version was made: kind (full, delta, remove),
                                            mode (crop/detect), model id, base version and the
                                            employees added / updated / removed, rejected images
                                            (with reasons), employees left without a usable image,
                                            likely duplicate identities
    galleries/<name>/current.json           {"version": N}: what new attendance jobs match against
    galleries/<name>/verdicts.parquet       reviewers' verdicts on this gallery's check-ins
                                            (faceq.outputs.verdicts): shown beside later flags

A template is the quality-weighted mean of an employee's enrolment embeddings whose quality
passes the enrolment threshold, re-normalised to unit length. Versions are never rewritten:
a delta enrolment (``enroll --update``) or a removal writes a new version that carries the
untouched employees' templates and photos over unchanged.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from faceq.errors import BadInputError, JobError
from faceq.job.ids import look_alike_pair, normalise_employee_id, shown
from faceq.job.spec import validate_name
from faceq.outputs.results import open_parquet, read_parquet
from faceq.storage.store import Storage

EMBEDDING_DIM = 512

GALLERY_SCHEMA = pa.schema([
    ("employee_id", pa.string()),
    ("template", pa.list_(pa.float32(), EMBEDDING_DIM)),
    ("n_images", pa.int32()),
    ("mean_quality", pa.float32()),
    ("model_id", pa.string()),
])

MEMBERS_SCHEMA = pa.schema([
    ("employee_id", pa.string()),
    ("item_id", pa.string()),
    ("source_uri", pa.string()),
    ("quality", pa.float32()),
    ("used", pa.bool_()),  # counted in the template (status ok and quality ≥ the enrolment threshold)
    ("job_id", pa.string()),  # the enrolment job that read it
])
DUPLICATE_LIMIT = 100

MODE_MISMATCH_HELP = ("embeddings of crop-mode and detect-mode images of the same person are not comparable "
                      "(a same-person similarity fell from 0.89 to 0.43)")


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
    members: pa.Table = field(default_factory=MEMBERS_SCHEMA.empty_table)


class EnrolmentBuilder:
    """Templates accumulated part by part: per employee, the quality-weighted sum of the usable
    embeddings (512 floats), never the rows themselves."""

    def __init__(self, enrol_quality: float):
        self.enrol_quality = enrol_quality
        self.rejected: list[dict] = []
        self._sums: dict[str, np.ndarray] = {}
        self._weights: dict[str, list[float]] = {}
        self._members: list[pa.Table] = []  # compact Arrow columns, not Python rows

    def add_table(self, table: pa.Table, job_id: str = "") -> None:
        """A part of enrolment results: templates (``add``) and which photo is which (members)."""
        self.add(table.drop_columns([c for c in ("source_uri",) if c in table.column_names]).to_pylist())
        n = table.num_rows
        uri = table.column("source_uri") if "source_uri" in table.column_names else pa.nulls(n, pa.string())
        used = pc.fill_null(pc.and_(pc.equal(table.column("status"), "ok"),
                                    pc.greater_equal(table.column("quality"), self.enrol_quality)), False)
        self._members.append(pa.table({
            "employee_id": table.column("employee_id"), "item_id": table.column("item_id"), "source_uri": uri,
            "quality": table.column("quality").cast(pa.float32()), "used": used,
            "job_id": pa.array([job_id] * n, pa.string())}, schema=MEMBERS_SCHEMA))

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
        members = pa.concat_tables(self._members) if self._members else MEMBERS_SCHEMA.empty_table()
        members = members.filter(pc.is_in(members.column("employee_id"), pa.array(employees, pa.string())))
        return Enrolment(table, self.rejected, without, likely_duplicates(employees, matrix, duplicate_similarity),
                         members)


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


def duplicates_involving(employees: list[str], templates: np.ndarray, touched: set[str], threshold: float,
                         limit: int = DUPLICATE_LIMIT) -> list[dict]:
    """``likely_duplicates`` restricted to pairs with at least one ``touched`` employee (a delta
    enrolment checks its new templates against the whole gallery, not every old pair again)."""
    rows = [i for i, e in enumerate(employees) if e in touched]
    if not rows or len(employees) < 2:
        return []
    similarity = templates[rows] @ templates.T
    pairs = {}
    for r, i in enumerate(rows):
        for j in np.flatnonzero(similarity[r] > threshold):
            if j != i:
                a, b = sorted((i, int(j)))
                pairs[(a, b)] = float(similarity[r, j])
    ranked = sorted(((s, a, b) for (a, b), s in pairs.items()), reverse=True)[:limit]
    return [{"employee_a": employees[a], "employee_b": employees[b], "similarity": round(s, 4)} for s, a, b in ranked]


def check_employee_ids(gallery: str, employee_ids: list[str], new: set[str]) -> None:
    """Refuse (JobError, both ids named) a ``new`` id that is not in NFC, holds an invisible or
    direction character, or looks like another id of the gallery (``faceq.job.ids``). The producer
    refuses these at planning; this is the check a plan written by anyone else still meets."""
    for employee_id in sorted(new):
        try:
            if normalise_employee_id(employee_id) != employee_id:
                raise BadInputError("bad_id", f"{ascii(employee_id)} is not in Unicode NFC form")
        except BadInputError as exc:
            raise JobError(f"gallery {gallery}: employee_id {exc.message}") from None
    pair = look_alike_pair(employee_ids, new)
    if pair is not None:
        raise JobError(f"gallery {gallery}: employee ids {shown(pair[0])} and {shown(pair[1])} look alike: a "
                       f"reviewer cannot tell them apart; enrol one of them under a distinct id")


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class GalleryStore:
    def __init__(self, storage: Storage):
        self.storage = storage

    # -- reading ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every gallery with a current version."""
        return [n for n in self.storage.list_children("galleries/") if self.storage.exists(f"{_prefix(n)}current.json")]

    def versions(self, name: str) -> list[int]:
        found = {int(m.group(1)) for key in self.storage.list_keys(_prefix(name))
                 if (m := re.match(rf"{re.escape(_prefix(name))}v(\d+)/gallery\.parquet$", key))}
        return sorted(found)

    def exists(self, name: str) -> bool:
        return self.storage.exists(f"{_prefix(validate_gallery_name(name))}current.json")

    def current_version(self, name: str) -> int:
        key = f"{_prefix(validate_gallery_name(name))}current.json"
        if not self.storage.exists(key):
            raise JobError(f"no gallery {name!r} in {self.storage.url}: enrol it first (python -m faceq.producer enroll)")
        return int(json.loads(self.storage.get_bytes(key))["version"])

    def _version(self, name: str, version: int | None) -> int:
        if version is None:
            return self.current_version(name)
        if not self.storage.exists(f"{_prefix(validate_gallery_name(name))}v{int(version)}/gallery.parquet"):
            raise JobError(f"gallery {name!r} has no version {version} (versions: {self.versions(name)})")
        return int(version)

    def info(self, name: str, version: int | None = None) -> dict:
        """How a version was made (``enrolment.json``) with its name, version and size. Versions
        written before faceq recorded it have no ``mode`` (None)."""
        version = self._version(name, version)
        key = f"{_prefix(name)}v{version}/enrolment.json"
        report = json.loads(self.storage.get_bytes(key)) if self.storage.exists(key) else {}
        info = {"name": name, "version": version, "ref": f"{name}@v{version}", "kind": "full", "mode": None,
                **report}
        if "n_employees" not in info:  # older versions: count the rows
            info["n_employees"] = len(self.employee_ids(name, version))
        return info

    def employee_ids(self, name: str, version: int) -> list[str]:
        data = self.storage.get_bytes(f"{_prefix(name)}v{version}/gallery.parquet")
        return read_parquet(data, ["employee_id"]).column("employee_id").to_pylist()

    def employees(self, name: str, version: int | None = None) -> list[dict]:
        """employee_id, n_images, mean_quality, model_id of every employee of a version (no templates)."""
        version = self._version(name, version)
        data = self.storage.get_bytes(f"{_prefix(name)}v{version}/gallery.parquet")
        return read_parquet(data, ["employee_id", "n_images", "mean_quality", "model_id"]).to_pylist()

    def members(self, name: str, version: int | None = None, employee_ids: list[str] | set[str] | None = None
                ) -> list[dict]:
        """Which images built the templates: one dict per enrolment image (``used`` False for the
        ones the threshold rejected), only for ``employee_ids`` when given (read one row group at
        a time). Empty for versions written before faceq recorded members."""
        version = self._version(name, version)
        key = f"{_prefix(name)}v{version}/members.parquet"
        if not self.storage.exists(key):
            return []
        wanted = None if employee_ids is None else pa.array(sorted(set(employee_ids)), pa.string())
        rows = []
        with open_parquet(self.storage.get_bytes(key)) as parquet:
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, use_threads=False)
                if wanted is not None:
                    table = table.filter(pc.is_in(table.column("employee_id"), wanted))
                rows += table.to_pylist()
        return rows

    def enrolment_photos(self, name: str, version: int | None, employee_ids, per_employee: int = 2
                         ) -> dict[str, list[dict]]:
        """The best ``per_employee`` enrolment photos of each employee (used ones first, by quality)."""
        photos: dict[str, list[dict]] = {}
        for member in self.members(name, version, employee_ids):
            photos.setdefault(member["employee_id"], []).append(member)
        return {employee: sorted(rows, key=lambda m: (not m["used"], -(m["quality"] or 0.0)))[:per_employee]
                for employee, rows in photos.items()}

    def mode(self, name: str, version: int | None = None) -> str | None:
        return self.info(name, version).get("mode")

    def check_mode(self, name: str, mode: str, version: int | None = None) -> None:
        """Refuse an attendance (or delta enrolment) in another mode than the gallery was enrolled in."""
        info = self.info(name, version)
        if info.get("mode") and info["mode"] != mode:
            raise JobError(f"gallery {info['ref']} was enrolled in {info['mode']} mode but this job uses {mode} "
                           f"mode: {MODE_MISMATCH_HELP}. Use --mode {info['mode']}, or enrol the gallery again "
                           f"with --mode {mode}")

    def mode_warnings(self, name: str, version: int, mode: str) -> list[str]:
        """What a job's summary says when it ran in another mode than the gallery was enrolled in."""
        try:
            self.check_mode(name, mode, version)
        except JobError as exc:
            return [f"MODE MISMATCH: {exc}"]
        return []

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

    def _members_table(self, name: str, version: int) -> pa.Table:
        key = f"{_prefix(name)}v{version}/members.parquet"
        return read_parquet(self.storage.get_bytes(key)) if self.storage.exists(key) else MEMBERS_SCHEMA.empty_table()

    # -- writing (callers serialise per gallery name: the ledger's gallery lock) -----------------

    def _write_version(self, name: str, table: pa.Table, members: pa.Table, report: dict) -> dict:
        """The version's files, gallery.parquet last (a version exists once it has one), then current."""
        version = (self.versions(name) or [0])[-1] + 1
        base = f"{_prefix(name)}v{version}/"
        report = {**report, "version": version, "n_employees": table.num_rows, "created_at": _now()}
        self.storage.put_bytes(base + "members.parquet", _parquet(members.cast(MEMBERS_SCHEMA)))
        self.storage.put_bytes(base + "enrolment.json", json.dumps(report, indent=2).encode(), "application/json")
        self.storage.put_bytes(base + "gallery.parquet", _parquet(table))
        self.storage.put_bytes(f"{_prefix(name)}current.json", json.dumps({"version": version}).encode(),
                               "application/json")
        return report

    def publish(self, name: str, enrolment: Enrolment, report: dict) -> int:
        """Write a new version and point ``current`` at it. Callers serialise per gallery name."""
        return self.publish_version(name, enrolment, report)["version"]

    def publish_version(self, name: str, enrolment: Enrolment, report: dict, *, update: bool = False,
                        duplicate_similarity: float | None = None) -> dict:
        """A new version from ``enrolment``; returns what ``enrolment.json`` records.

        ``update`` (delta enrolment): the current version's employees are carried over, and only
        the employees of this enrolment are added or replaced. An employee of the enrolment left
        without a usable image keeps their previous template (``kept_previous``). The gallery's
        mode and model must be the enrolment's.
        """
        validate_gallery_name(name)
        model_id = report.get("model_id")
        report = {"kind": "full", **report}
        new_ids = enrolment.table.column("employee_id").to_pylist()
        if not update or not self.exists(name):
            check_employee_ids(name, new_ids, set(new_ids))
            return self._write_version(name, enrolment.table, enrolment.members, report)
        base_version = self.current_version(name)
        base_info = self.info(name, base_version)
        base = read_parquet(self.storage.get_bytes(f"{_prefix(name)}v{base_version}/gallery.parquet"))
        base_models = set(base.column("model_id").to_pylist())
        if model_id and base_models and base_models != {model_id}:
            raise JobError(f"gallery {name}@v{base_version} was enrolled with model {sorted(base_models)[0]}; this "
                           f"enrolment used {model_id}: templates of different models cannot share a gallery — "
                           f"enrol the whole gallery again with this model")
        if report.get("mode") and base_info.get("mode") and report["mode"] != base_info["mode"]:
            raise JobError(f"gallery {name}@v{base_version} was enrolled in {base_info['mode']} mode; this delta "
                           f"enrolment used {report['mode']} mode: {MODE_MISMATCH_HELP}")
        before = set(base.column("employee_id").to_pylist())
        check_employee_ids(name, [*before, *new_ids], set(new_ids))
        touched = pa.array(new_ids, pa.string())
        table = pa.concat_tables([base.filter(pc.invert(pc.is_in(base.column("employee_id"), touched))),
                                  enrolment.table.cast(base.schema)])
        table = table.sort_by("employee_id")
        base_members = self._members_table(name, base_version)
        members = pa.concat_tables([
            base_members.filter(pc.invert(pc.is_in(base_members.column("employee_id"), touched))).cast(MEMBERS_SCHEMA),
            enrolment.members.cast(MEMBERS_SCHEMA)]).sort_by("employee_id")
        employees = table.column("employee_id").to_pylist()
        report["kind"] = "delta"
        report["base_version"] = base_version
        report["changes"] = {
            "added": sorted(set(new_ids) - before),
            "updated": sorted(set(new_ids) & before),
            "removed": [],
            "kept_previous": sorted(set(enrolment.without_usable_image) & before),
            "unchanged": len(before - set(new_ids)),
        }
        if duplicate_similarity is not None:
            templates = np.array(table.column("template").combine_chunks().flatten(), np.float32)
            report["likely_duplicates"] = duplicates_involving(employees, templates.reshape(-1, EMBEDDING_DIM),
                                                               set(new_ids), duplicate_similarity)
        report["enrolled"] = table.num_rows
        return self._write_version(name, table, members, report)

    def remove(self, name: str, employee_ids: list[str], by: str | None = None) -> dict:
        """A new version without ``employee_ids`` (every one must be in the current version, and
        at least one employee must stay). Returns what ``enrolment.json`` records."""
        base_version = self.current_version(name)
        base_info = self.info(name, base_version)
        base = read_parquet(self.storage.get_bytes(f"{_prefix(name)}v{base_version}/gallery.parquet"))
        present = set(base.column("employee_id").to_pylist())
        wanted = sorted(set(employee_ids))
        unknown = [e for e in wanted if e not in present]
        if not wanted or unknown:
            raise JobError(f"gallery {name}@v{base_version} has no employee {', '.join(unknown) or '(none given)'}: "
                           f"nothing was changed")
        if len(wanted) == len(present):
            raise JobError(f"removing {len(wanted)} employee(s) would leave gallery {name} empty: nothing was changed")
        drop = pa.array(wanted, pa.string())
        table = base.filter(pc.invert(pc.is_in(base.column("employee_id"), drop)))
        members = self._members_table(name, base_version)
        members = members.filter(pc.invert(pc.is_in(members.column("employee_id"), drop)))
        report = {"kind": "remove", "job_id": None, "by": by, "mode": base_info.get("mode"),
                  "model_id": base_info.get("model_id"), "base_version": base_version, "enrolled": table.num_rows,
                  "changes": {"added": [], "updated": [], "removed": wanted, "kept_previous": [],
                              "unchanged": table.num_rows},
                  "rejected_images": [], "employees_without_usable_image": [], "likely_duplicates": []}
        return self._write_version(name, table, members, report)
