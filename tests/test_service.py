"""Chunk processing and finalization as plain services: real storage and Redis, no broker."""

import csv
import io
import json
import threading
import time

import numpy as np
import pytest

from faceq.job import spec as jobs
from faceq.job.spec import Item, JobHeader
from faceq.job.ledger import ChunkRecord, Ledger
from faceq.outputs.results import read_parquet
from faceq.settings import Settings
from faceq.storage.store import open_storage
from faceq.models.weights import load_model
from devstack.samples import write_sample_set
from faceq.errors import ModelError
from faceq.models.detect import FaceDetector
from tests.conftest import YUNET, assert_embedding_ok, needs_yunet
from faceq.workers.engine import Engine
from faceq.producer.submit import JobOptions, write_plan
from faceq.workers.service import ChunkProcessor, FinalizeOutcome, finalize_job


@pytest.fixture(scope="module")
def engine():
    return Engine(load_model(None, "ir_se_tiny", seed=2), "cpu", "fp32", max_batch=8)


@pytest.fixture
def setup(tmp_path, redis_server, engine):
    storage = open_storage((tmp_path / "store").as_uri())
    ledger = Ledger.from_url(redis_server.url)
    processor = ChunkProcessor(Settings(io_threads=4), storage, ledger, engine, worker="test-worker")
    samples = tmp_path / "samples"
    expected = write_sample_set(samples, n_good=12)
    items = [Item(name, (samples / name).as_uri(), {"device_id": name.split("/")[1]}) for name in sorted(expected)]
    items.append(Item("gone.jpg", (samples / "gone.jpg").as_uri(), {"device_id": "x"}))
    expected["gone.jpg"] = "unreadable"
    header = write_plan(Settings(), storage, items=items, source=str(samples), job_id=f"svc-{tmp_path.name}",
                        options=JobOptions("audit", chunk_size=8), allowed_sources=(samples.as_uri(),))
    ledger.start(header.job_id, header.run_id, "audit", header.n_chunks, header.n_items)
    yield storage, ledger, processor, Plan(header, items), expected
    processor.close()


class Plan:
    """A planned run and its items, as the tests see it."""

    def __init__(self, header: JobHeader, items: list[Item]):
        self.header, self.items = header, items
        self.job_id, self.run_id = header.job_id, header.run_id

    def chunks(self):
        return [self.header.chunk(i) for i in range(self.header.n_chunks)]

    def chunk_items(self, ref):
        return self.items[ref.index * self.header.chunk_size:(ref.index + 1) * self.header.chunk_size]


def _rows(storage, manifest):
    tables = [read_parquet(storage.get_bytes(jobs.part_key(manifest.job_id, manifest.run_id, c.index)))
              for c in manifest.chunks()]
    return [row for table in tables for row in table.to_pylist()]


def test_every_item_gets_exactly_one_row_and_bad_items_become_error_rows(setup):
    storage, ledger, processor, manifest, expected = setup
    outcomes = [processor.process(chunk) for chunk in manifest.chunks()]
    assert [o.record for o in outcomes] == [ChunkRecord.PENDING] * (len(outcomes) - 1) + [ChunkRecord.COMPLETE]
    rows = _rows(storage, manifest)
    assert [r["item_id"] for r in rows] == [i.item_id for i in manifest.items]
    devices = {i.item_id: i.fields["device_id"] for i in manifest.items}
    for row in rows:
        want = expected[row["item_id"]]
        assert row["model_id"] == "rts-ir_se_tiny-random-seed2" and row["job_id"] == manifest.job_id
        assert row["device_id"] == devices[row["item_id"]]
        if want == "ok":
            assert row["status"] == "ok" and row["error"] is None and row["face_count"] == 1
            assert_embedding_ok(row["embedding"])
            assert np.isfinite(row["quality"])
        else:
            assert row["status"] == "error" and row["embedding"] is None
            assert row["error"].startswith(f"{want}: ")
            assert row["needs_review"] and row["review_reasons"] == ["error"]


def test_a_redelivered_chunk_overwrites_its_part(setup):
    storage, ledger, processor, manifest, _ = setup
    chunk = manifest.chunks()[0]
    first = processor.process(chunk)
    again = processor.process(chunk)
    assert not first.skipped and again.skipped  # recorded once: not recomputed
    assert list(storage.list_keys(jobs.results_prefix(manifest.job_id, manifest.run_id))) == [
        jobs.part_key(manifest.job_id, manifest.run_id, 0)]
    assert ledger.progress(manifest.job_id).items_done == len(manifest.chunk_items(chunk))


def test_a_chunk_of_an_earlier_run_is_dropped(setup):
    storage, ledger, processor, manifest, _ = setup
    ledger.start(manifest.job_id, "run2", "audit", manifest.header.n_chunks, len(manifest.items))
    assert processor.process(manifest.chunks()[0]).record is ChunkRecord.STALE
    assert not storage.exists(jobs.part_key(manifest.job_id, manifest.run_id, 0))


def test_summary_and_review_are_written_once_by_concurrent_finalizers(setup):
    storage, ledger, processor, manifest, expected = setup
    for chunk in manifest.chunks():
        processor.process(chunk)
    barrier = threading.Barrier(6)
    outcomes = []

    def finalizer():
        barrier.wait()
        outcomes.append(finalize_job(storage, ledger, manifest.job_id, manifest.run_id))

    threads = [threading.Thread(target=finalizer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(FinalizeOutcome.WRITTEN) == 1
    assert set(outcomes) <= {FinalizeOutcome.WRITTEN, FinalizeOutcome.BUSY, FinalizeOutcome.ALREADY_DONE}
    assert finalize_job(storage, ledger, manifest.job_id, manifest.run_id) is FinalizeOutcome.ALREADY_DONE

    summary = json.loads(storage.get_bytes(jobs.summary_key(manifest.job_id)))
    n_bad = sum(v != "ok" for v in expected.values())
    assert summary["n_items"] == summary["n_rows"] == len(expected)
    assert summary["counts"]["status"] == {"error": n_bad, "ok": len(expected) - n_bad}
    assert summary["counts"]["review_reasons"]["error"] == n_bad
    assert sum(summary["quality"]["histogram"]["counts"]) == len(expected) - n_bad
    review = list(csv.DictReader(io.StringIO(
        storage.get_bytes(jobs.review_key(manifest.job_id, manifest.run_id)).decode("utf-8-sig"))))
    assert {r["item_id"] for r in review} == {k for k, v in expected.items() if v != "ok"}
    assert all(r["device_id"] for r in review)


def _detect_chunk(tmp_path, all_faces: bool):
    from tests.photos import write_photos

    photos = tmp_path / "photos"
    write_photos(photos)
    (photos / "empty.jpg").write_bytes(b"")
    names = ["portrait.png", "cat.jpg", "two-people.png", "empty.jpg"]
    items = [Item(n, (photos / n).as_uri()) for n in names]
    header = JobHeader(job_id=f"det-{tmp_path.name}", run_id="r", kind="audit", mode="detect", source=str(photos),
                       created_at="2026-11-24T00:00:00+00:00", chunk_size=8, n_items=len(items),
                       allowed_sources=(photos.as_uri(),), all_faces=all_faces)
    return header, items


@needs_yunet
@pytest.mark.parametrize("all_faces", [False, True])
def test_detect_mode_rows_for_faces_no_faces_and_errors(tmp_path, redis_server, engine, all_faces):
    storage = open_storage((tmp_path / "store").as_uri())
    processor = ChunkProcessor(Settings(io_threads=2), storage, Ledger.from_url(redis_server.url), engine, "w",
                               detector=FaceDetector(str(YUNET)))
    rows = processor.rows(*_detect_chunk(tmp_path, all_faces))
    processor.close()
    got = [(r.item_id, r.status, r.face_count, r.face_index, r.review_reasons) for r in rows]
    two = [("two-people.png", "ok", 2, 0, rows[2].review_reasons)]
    if all_faces:
        two.append(("two-people.png", "ok", 2, 1, rows[3].review_reasons))
    assert got == [
        ("portrait.png", "ok", 1, 0, rows[0].review_reasons),
        ("cat.jpg", "no_face", 0, 0, ["no_face"]),
        *two,
        ("empty.jpg", "error", 0, 0, ["error"]),
    ]
    portrait = rows[0]
    assert_embedding_ok(portrait.embedding)
    assert len(portrait.landmarks) == 10 and len(portrait.bbox) == 4
    assert rows[1].needs_review and rows[1].embedding is None
    if all_faces:
        assert rows[2].bbox[0] < rows[3].bbox[0]  # the larger face first


def test_a_detect_job_on_a_worker_without_detector_fails_with_the_reason(tmp_path, redis_server, engine):
    storage = open_storage((tmp_path / "store").as_uri())
    processor = ChunkProcessor(Settings(), storage, Ledger.from_url(redis_server.url), engine, "w", detector=None)
    with pytest.raises(ModelError, match="has no face detector") as raised:
        processor.rows(*_detect_chunk(tmp_path, all_faces=False))
    processor.close()
    # advice that fits a worker started for crop only: not "run a crop-only worker"
    message = str(raised.value)
    assert "`faceq models fetch --only detector`" in message and "FACEQ_MODES=crop,detect" in message
    assert "--mode crop" in message and "crop-only worker" not in message


def test_chunks_sharing_the_batcher_get_the_same_numbers_as_alone(setup, engine):
    from concurrent.futures import ThreadPoolExecutor

    from faceq.workers.batcher import MicroBatcher

    storage, ledger, processor, manifest, _ = setup
    chunks = [manifest.chunk_items(c) for c in manifest.chunks()]
    alone = {r.item_id: r for items in chunks for r in processor.rows(manifest.header, items)}
    batcher = MicroBatcher(engine.infer, max_batch=8, max_delay_ms=20)
    shared = ChunkProcessor(Settings(io_threads=4), storage, ledger, engine, "w", batcher=batcher)
    with ThreadPoolExecutor(len(chunks)) as pool:
        together = [r for rows in pool.map(lambda items: shared.rows(manifest.header, items), chunks) for r in rows]
    shared.close()
    batcher.close()
    assert batcher.stats.images == sum(r.status == "ok" for r in together)
    for row in together:
        if row.status == "ok":
            np.testing.assert_allclose(row.embedding, alone[row.item_id].embedding, atol=1e-5)
            assert abs(row.quality - alone[row.item_id].quality) <= 1e-5


def test_a_gallery_of_another_model_is_refused_with_both_model_ids(tmp_path, redis_server, engine):
    from faceq.gallery import GalleryStore, build_enrolment

    storage = open_storage((tmp_path / "store").as_uri())
    vector = np.ones(512, dtype=np.float32) / np.sqrt(512)
    rows = [{"employee_id": "e1", "item_id": "x", "status": "ok", "error": None, "quality": 0.9,
             "embedding": vector}]
    GalleryStore(storage).publish("staff", build_enrolment(rows, 0.6, 0.9, "rts-ir_se_64-sha256:0123"), {})
    samples = tmp_path / "samples"
    write_sample_set(samples, n_good=1)
    item = Item("r1", (samples / "faces/cam0/face-0000.jpg").as_uri(), {"employee_id": "e1"})
    header = JobHeader(job_id="j", run_id="r", kind="attendance", mode="crop", source=str(samples),
                       created_at="2026-11-24T00:00:00+00:00", chunk_size=8, n_items=1, columns=("employee_id",),
                       allowed_sources=(samples.as_uri(),), gallery="staff", gallery_version=1)
    processor = ChunkProcessor(Settings(), storage, Ledger.from_url(redis_server.url), engine, "w")
    with pytest.raises(ModelError, match=r"staff@v1 was enrolled with model rts-ir_se_64-sha256:0123 but this "
                                         r"worker runs rts-ir_se_tiny-random-seed2"):
        processor.rows(header, [item])
    processor.close()


def test_a_chunk_started_too_often_is_given_up_with_the_reason(setup):
    from faceq.workers.service import GaveUp

    storage, ledger, processor, manifest, _ = setup
    chunk = manifest.chunks()[0]
    for _ in range(processor.settings.max_deliveries):  # the worker died each time
        ledger.count_delivery(manifest.job_id, chunk.index)
    with pytest.raises(GaveUp, match="started 5 times without finishing"):
        processor.process(chunk)
    assert not storage.exists(jobs.part_key(manifest.job_id, manifest.run_id, chunk.index))


def test_hostile_references_become_error_rows_that_reveal_nothing(tmp_path, redis_server, engine):
    import os

    samples = tmp_path / "samples"
    write_sample_set(samples, n_good=1)
    good = samples / "faces/cam0/face-0000.jpg"
    (samples / "passwd_link.jpg").symlink_to("/etc/passwd")
    (samples / "environ_link.jpg").symlink_to("/proc/self/environ")
    os.mkfifo(samples / "pipe.jpg")
    references = {
        "good": good.as_uri(),
        "outside": "file:///etc/passwd",
        "traversal": (samples / "../../../../etc/passwd").as_uri(),
        "link-out": (samples / "passwd_link.jpg").as_uri(),
        "environ": (samples / "environ_link.jpg").as_uri(),
        "device": "file:///dev/zero",
        "other-bucket": "s3://some-other-bucket/secret.jpg",
        "fifo": (samples / "pipe.jpg").as_uri(),
        "http": "http://example.com/x.jpg",
    }
    items = [Item(name, uri) for name, uri in references.items()]
    header = JobHeader(job_id="hostile", run_id="r", kind="audit", mode="crop", source=str(samples),
                       created_at="2026-11-24T00:00:00+00:00", chunk_size=16, n_items=len(items),
                       allowed_sources=(samples.as_uri(),))
    storage = open_storage((tmp_path / "store").as_uri())
    processor = ChunkProcessor(Settings(io_threads=4), storage, Ledger.from_url(redis_server.url), engine, "w")
    rows = {row.item_id: row for row in processor.rows(header, items)}
    processor.close()
    assert rows["good"].status == "ok"
    codes = {name: row.error.split(":")[0] for name, row in rows.items() if name != "good"}
    assert codes == {"outside": "forbidden", "traversal": "forbidden", "link-out": "forbidden",
                     "environ": "forbidden", "device": "forbidden", "other-bucket": "forbidden",
                     "fifo": "not_a_regular_file", "http": "bad_uri"}
    for name in ("outside", "other-bucket", "link-out"):  # the same words whether or not the target exists
        assert rows[name].error == rows["traversal"].error


def test_decodes_wait_for_the_pixel_budget():
    from faceq.workers.pixel_budget import PixelBudget

    budget = PixelBudget(100)
    order = []

    def decode(name, pixels):
        with budget.hold(pixels):
            order.append(f"start {name}")
            time.sleep(0.05)
            order.append(f"end {name}")

    threads = [threading.Thread(target=decode, args=(n, 80)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order[1].startswith("end")  # the second 80-pixel image waited for the first
    assert budget.available == 100
    with budget.hold(10_000):  # larger than the whole budget: waits for all of it, never forever
        assert budget.available == 0
