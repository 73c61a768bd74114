"""Every job kind's parts open in every common Parquet reader, at the versions installed.

CI runs this module twice: at the lowest versions pyproject.toml allows (pyarrow 15, whose
Arrow C++ can neither write nor read null fixed-size lists) and at the newest. Jobs of every
kind go through a real redis-server and worker process: an audit with error rows in crop mode
and in detect mode, an enrolment, attendance against the enrolled gallery, and a compare job.
Their parts are then read one by one and as one glob with pyarrow, pandas, polars and DuckDB.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from faceq.job import spec as jobs
from faceq.outputs.results import RESULT_SCHEMA, read_parquet, vectors
from faceq.storage.store import open_storage
from devstack.samples import draw_face, encode, write_sample_set
from tests.conftest import YUNET, redis_and_worker, write_csv
from tests.photos import write_photos
from tests.test_end_to_end import Stack

pytestmark = pytest.mark.integration

LEGACY_PART = Path(__file__).parent / "data" / "legacy-part-faceq-0.2.parquet"


@pytest.fixture(scope="module")
def finished_jobs(tmp_path_factory) -> tuple[Stack, dict[str, int]]:
    """Jobs of every kind run to completion; → the stack and each job's number of input items."""
    tmp = tmp_path_factory.mktemp("readers")
    with redis_and_worker(tmp, "readers-worker", (tmp / "store").as_uri(), FACEQ_CHUNK_SIZE="8") as (env, worker):
        stack = Stack(env, open_storage((tmp / "store").as_uri()), worker)
        samples = tmp / "samples"
        expected = write_sample_set(samples, n_good=10)  # and six broken files: error rows
        faces = tmp / "faces"
        faces.mkdir()
        rng = np.random.default_rng(3)
        for i in range(4):
            (faces / f"f{i}.jpg").write_bytes(encode(draw_face(rng, 140), ".jpg"))
        (faces / "cut.jpg").write_bytes((faces / "f0.jpg").read_bytes()[:200])
        enrol = write_csv(tmp / "enrol.csv", ["employee_id", "image"],
                          [["e1", str(faces / "f0.jpg")], ["e2", str(faces / "f1.jpg")], ["e3", str(faces / "cut.jpg")]])
        checkins = write_csv(tmp / "checkins.csv", ["record_id", "employee_id", "image", "device_id", "captured_at"],
                             [["r1", "e1", str(faces / "f0.jpg"), "gate", "2026-12-01T08:00:00Z"],
                              ["r2", "e2", str(faces / "f2.jpg"), "gate", "not a time"],
                              ["r3", "e1", str(faces / "cut.jpg"), "gate", "2026-12-01T08:02:00"]])
        pairs = write_csv(tmp / "pairs.csv", ["pair_id", "image_a", "image_b", "case"],
                          [["p1", str(faces / "f0.jpg"), str(faces / "f0.jpg"), "A"],
                           ["p2", str(faces / "f1.jpg"), str(faces / "cut.jpg"), "B"]])
        submissions = {
            "audit-crop": (("audit", str(samples), "--mode", "crop"), len(expected)),
            "enrol": (("enroll", str(enrol), "--gallery", "staff", "--mode", "crop"), 3),
            "attendance": (("attendance", str(checkins), "--gallery", "staff", "--mode", "crop", "--top-k", "2"), 3),
            "compare": (("compare", str(pairs), "--mode", "crop"), 2),
        }
        if YUNET.is_file():
            photos = tmp / "photos"
            write_photos(photos)
            (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")
            submissions["audit-detect"] = (("audit", str(photos), "--mode", "detect"), len(list(photos.iterdir())))
        for job_id, (args, _) in submissions.items():
            done = stack.producer(*args, "--job-id", job_id, "--wait", "--no-progress",
                                  FACEQ_ALLOWED_SOURCES=tmp.as_uri())
            assert done.returncode == 0, f"{job_id}: {done.stderr}"
        yield stack, {job_id: items for job_id, (_, items) in submissions.items()}


def _parts(stack: Stack, job_id: str) -> list[str]:
    summary = json.loads(stack.storage.get_bytes(jobs.summary_key(job_id)))
    return sorted(str(p) for p in (stack.storage.root / summary["outputs"]["results"]).glob("*.parquet"))


def _all_parts(stack: Stack, items: dict[str, int]) -> list[str]:
    return [part for job_id in items for part in _parts(stack, job_id)]


def test_every_part_opens_in_pyarrow_with_one_row_per_item(finished_jobs):
    stack, items = finished_jobs
    for job_id, n_items in items.items():
        tables = [pq.read_table(part) for part in _parts(stack, job_id)]
        rows = pa.concat_tables(tables)
        assert rows.num_rows == n_items and len(set(rows.column("item_id").to_pylist())) == n_items, job_id
        assert rows.schema.remove_metadata() == RESULT_SCHEMA, job_id
        vector = "embedding_b" if job_id == "compare" else "embedding"  # a broken pair keeps photo a's
        errors = [r for r in rows.to_pylist() if r["status"] == "error"]
        assert errors and all(r[vector] is None for r in errors), job_id
        embeddings = vectors(rows.column(vector))
        ok = np.asarray(rows.column("status").to_pylist()) == "ok"
        assert embeddings.shape == (n_items, 512) and ok.any(), job_id
        assert np.allclose(np.linalg.norm(embeddings[ok], axis=1), 1.0, atol=1e-4)
        assert np.isnan(embeddings[~ok]).all()
    assert {"audit-crop", "enrol", "attendance", "compare"} <= set(items)
    crop = pa.concat_tables(pq.read_table(p) for p in _parts(stack, "audit-crop"))
    assert crop.column("status").to_pylist().count("error") == 6  # the sample set's broken files


def test_a_glob_over_every_job_kind_reads_without_options(finished_jobs):
    stack, items = finished_jobs
    parts = _all_parts(stack, items)
    total = sum(items.values())
    table = ds.dataset(parts, format="parquet").to_table()
    assert table.num_rows == total
    assert sorted(set(table.column("job_id").to_pylist())) == sorted(items)
    compare = table.filter(pa.compute.equal(table.column("job_id"), "compare")).to_pylist()
    assert {r["item_id"]: r["extra"] for r in compare} == {"p1": [("case", "A")], "p2": [("case", "B")]}
    same = next(r for r in compare if r["item_id"] == "p1")
    assert len(same["embedding_b"]) == 512 and same["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_pandas_reads_every_part(finished_jobs):
    pd = pytest.importorskip("pandas")
    stack, items = finished_jobs
    frame = pd.concat([pd.read_parquet(part) for part in _all_parts(stack, items)], ignore_index=True)
    assert len(frame) == sum(items.values())
    ok = frame[frame["status"] == "ok"]
    matrix = np.stack(ok["embedding"].to_numpy()).astype(np.float32)
    assert matrix.shape == (len(ok), 512)
    errors = frame[(frame["status"] == "error") & (frame["job_id"] != "compare")]  # compare keeps photo a's
    assert len(errors) >= 6 and errors["embedding"].isna().all()


def test_polars_reads_a_glob_of_every_job_kind(finished_jobs):
    pl = pytest.importorskip("polars")
    stack, items = finished_jobs
    pattern = str(stack.storage.root / "jobs" / "*" / "runs" / "*" / "results" / "*.parquet")
    assert len(glob.glob(pattern)) == len(_all_parts(stack, items))
    frame = pl.read_parquet(pattern)
    assert frame.height == sum(items.values())
    counts = dict(frame.group_by("job_id").len().iter_rows())
    assert counts == items
    ok = frame.filter(pl.col("status") == "ok")
    assert ok.select(pl.col("embedding").list.len().unique()).to_series().to_list() == [512]
    errors = frame.filter((pl.col("status") == "error") & (pl.col("job_id") != "compare"))
    assert errors.height >= 6 and errors.select(pl.col("embedding").is_null().all()).item()


def test_duckdb_reads_a_glob_of_every_job_kind(finished_jobs):
    duckdb = pytest.importorskip("duckdb")
    stack, items = finished_jobs
    pattern = str(stack.storage.root / "jobs" / "*" / "runs" / "*" / "results" / "*.parquet")
    rows = duckdb.sql(f"SELECT job_id, count(*), count(embedding), max(len(embedding)), count(landmarks) "
                      f"FROM read_parquet('{pattern}') GROUP BY job_id").fetchall()
    assert {job_id: n for job_id, n, *_ in rows} == items
    assert all(longest == 512 for _, _, with_embedding, longest, _ in rows if with_embedding)
    crop_landmarks = {job_id: n for job_id, _, _, _, n in rows if job_id != "audit-detect"}
    assert set(crop_landmarks.values()) == {0}  # crop mode has no landmarks: null, not an empty list


def test_faceq_reads_parts_written_by_faceq_0_2_on_every_pyarrow():
    """Parts of faceq 0.2 hold null fixed-size lists; faceq's own tools still read them."""
    data = LEGACY_PART.read_bytes()
    legacy = pq.ParquetFile(LEGACY_PART).schema_arrow
    assert pa.types.is_fixed_size_list(legacy.field("embedding").type)  # the old format, as written
    table = read_parquet(data)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.schema.field("landmarks").type == pa.list_(pa.float32())
    assert table.schema.remove_metadata() == RESULT_SCHEMA
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["embedding"] is None and rows[1]["error"].startswith("truncated: ")
    assert rows[0]["landmarks"] is None and len(rows[0]["bbox"]) == 4
    assert json.loads(table.schema.metadata[b"faceq.chunk_stats"])["n_items"] == 3
    embeddings = vectors(table.column("embedding"))
    assert np.allclose(np.linalg.norm(embeddings[[0, 2]], axis=1), 1.0, atol=1e-5)
    only = read_parquet(data, ["item_id", "embedding"])
    assert only.column_names == ["item_id", "embedding"] and only.column("embedding").null_count == 1
