"""Compare jobs: pairs of photos through a real redis-server, worker process and S3 (moto).

The worker loads a real checkpoint file (the tiny IR-SE's state dict) whose RTS head scores
every face 0.9, so the seed's thresholds can say ``same`` for a photo compared with itself.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceq import Client
from faceq.job.spec import Item
from faceq.job.ledger import Ledger
from faceq.settings import Settings
from faceq.storage.store import open_storage
from faceq.models.weights import load_model
from devstack.samples import draw_face, encode
from faceq.producer.submit import JobOptions, write_plan
from tests.conftest import assert_embedding_ok, job_rows, needs_yunet, redis_and_worker, write_csv
from tests.dom import parse
from tests.photos import write_photos
from faceq.workers.engine import Engine
from faceq.workers.service import ChunkProcessor

pytestmark = pytest.mark.integration

QUALITY = 0.9


def confident_checkpoint(path: Path) -> Path:
    """A tiny IR-SE state dict whose RTS head outputs logvar = log(0.9) for every face."""
    state = load_model(None, "ir_se_tiny", seed=5).model.state_dict()
    state["logvar_rts_backbone.0.weight"].zero_()
    state["logvar_rts_backbone.0.bias"].zero_()
    state["logvar_rts_backbone.1.weight"].fill_(1.0)
    state["logvar_rts_backbone.1.bias"].fill_(math.log(QUALITY))
    state["logvar_rts_backbone.1.running_mean"].zero_()
    state["logvar_rts_backbone.1.running_var"].fill_(1.0)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_endpoint, s3_client):
    tmp = tmp_path_factory.mktemp("compare")
    s3_client.create_bucket(Bucket="compare-store")
    with redis_and_worker(tmp, "compare-worker", "s3://compare-store/faceq", s3_endpoint,
                          FACEQ_MODEL_WEIGHTS=str(confident_checkpoint(tmp / "confident.pt"))) as (env, _):
        yield env, tmp


@pytest.fixture(scope="module")
def client(stack) -> Client:
    env, _ = stack
    return Client(replace(Settings.from_env(), broker_url=env["FACEQ_BROKER_URL"], storage_url=env["FACEQ_STORAGE_URL"],
                          s3_endpoint_url=env["FACEQ_S3_ENDPOINT_URL"]))


def _manifest(path: Path, rows: list[dict]) -> Path:
    return write_csv(path, list(rows[0]), [list(row.values()) for row in rows])


@needs_yunet
def test_a_compare_job_decides_every_pair_in_detect_mode(client, stack):
    _, tmp = stack
    photos = tmp / "photos"
    write_photos(photos)  # portrait.png, cat.jpg, two-people.png
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")
    rows = [
        {"pair_id": "self", "image_a": "portrait.png", "image_b": "portrait.png", "case": "HR-1"},
        {"pair_id": "broken", "image_a": "portrait.png", "image_b": "broken.jpg", "case": "HR-2"},
        {"pair_id": "cat", "image_a": "cat.jpg", "image_b": "portrait.png", "case": "HR-3"},
        {"pair_id": "crowd", "image_a": "two-people.png", "image_b": "portrait.png", "case": "HR-4"},
        {"pair_id": "missing", "image_a": "portrait.png", "image_b": "gone.png", "case": "HR-5"},
    ]
    job = client.compare_pairs(_manifest(photos / "pairs.csv", rows), mode="detect", job_id="compare-detect")
    summary = job.wait(timeout=180)
    table = job.results()
    by_pair = {row["item_id"]: row for row in table.to_pylist()}
    assert sorted(by_pair) == sorted(r["pair_id"] for r in rows) and table.num_rows == len(rows)  # one row per pair

    same = by_pair["self"]
    assert same["decision"] == "same" and not same["needs_review"] and same["status"] == "ok"
    assert same["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert same["quality"] == pytest.approx(QUALITY, abs=1e-4) and same["quality_b"] == pytest.approx(QUALITY, abs=1e-4)
    assert same["face_count"] == same["face_count_b"] == 1 and len(same["bbox"]) == len(same["bbox_b"]) == 4
    assert_embedding_ok(same["embedding"]) and assert_embedding_ok(same["embedding_b"])
    assert same["extra"] == [("case", "HR-1")] and same["source_uri"] == same["source_uri_b"]

    broken = by_pair["broken"]
    assert broken["decision"] == "error" and broken["status"] == "error" and broken["needs_review"]
    assert broken["error"].startswith("image_b: ") and broken["quality"] == pytest.approx(QUALITY, abs=1e-4)
    assert by_pair["missing"]["decision"] == "error" and by_pair["missing"]["error"].startswith("image_b: unreadable")

    cat = by_pair["cat"]
    assert cat["decision"] == "no_face" and cat["status"] == "no_face" and cat["face_count"] == 0
    assert cat["similarity"] is None and cat["review_reasons"] == ["no_face"]

    crowd = by_pair["crowd"]  # the largest face (the full-size portrait) is the one compared
    assert crowd["face_count"] == 2 and "multiple_faces" in crowd["review_reasons"] and crowd["needs_review"]
    assert crowd["similarity"] > 0.9

    assert summary["counts"]["decision"] == {"error": 2, "no_face": 1, "same": 2}
    review = {row["item_id"]: row for row in job.review()}
    assert set(review) == {"broken", "cat", "crowd", "missing"}
    assert review["broken"]["section"] == "error" and "(image_b: truncated)" in review["broken"]["reason"]
    assert "(image_b: unreadable)" in review["missing"]["reason"]
    assert review["crowd"]["section"] == "multiple_faces" and review["crowd"]["quality_b"]
    # a photo in several pairs is uploaded once (one name per local file)
    inputs = client.storage.list_keys(summary["outputs"]["results"].replace("results/", "inputs/"))
    assert len([k for k in inputs if k.endswith("portrait.png")]) == 1
    report = client.storage.get_bytes(summary["outputs"]["report"]).decode()
    assert "Unreadable photo" in report and "photo B" in report


def test_compare_in_one_call_and_from_the_command_line(client, stack):
    env, tmp = stack
    rng = np.random.default_rng(3)
    folder = tmp / "crops"
    folder.mkdir()
    for name in ("badge", "scan", "other"):
        (folder / f"{name}.jpg").write_bytes(encode(draw_face(rng, 112), ".jpg"))
    (folder / "copy.jpg").write_bytes((folder / "badge.jpg").read_bytes())

    row = client.compare(folder / "badge.jpg", (folder / "copy.jpg").read_bytes(), timeout=120)
    assert row["decision"] == "same" and row["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert row["item_id"] == "pair" and row["status"] == "ok" and row["quality_b"] == pytest.approx(QUALITY, abs=1e-4)
    assert row["random_weights"] is False and row["warning"] is None  # a real checkpoint: no placeholder warning

    manifest = _manifest(folder / "pairs.csv", [
        {"pair_id": "p1", "image_a": "badge.jpg", "image_b": "copy.jpg"},
        {"pair_id": "p2", "image_a": "badge.jpg", "image_b": "scan.jpg"},
        {"pair_id": "p3", "image_a": "other.jpg", "image_b": "nowhere/../../etc/passwd"},
    ])
    refused = subprocess.run([sys.executable, "-m", "faceq.producer", "compare", str(manifest), "--wait"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "pairs.csv:4: image_b is outside the job's allowed sources" in refused.stderr
    manifest.write_text("\n".join(manifest.read_text().splitlines()[:3]) + "\n")
    done = subprocess.run([sys.executable, "-m", "faceq.producer", "compare", str(manifest), "--wait", "--no-progress",
                           "--job-id", "compare-cli"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "decisions:" in done.stdout and '"same"' in done.stdout
    rows = {r["item_id"]: r for r in job_rows(client.storage, "compare-cli").to_pylist()}
    assert sorted(rows) == ["p1", "p2"] and rows["p1"]["decision"] == "same"
    assert rows["p2"]["similarity"] < 1.0 - 1e-3  # two different drawn faces


def test_the_compare_report_shows_the_manifests_own_columns_and_both_paths(client, stack):
    env, tmp = stack
    folder = tmp / "hr"
    folder.mkdir()
    (folder / "badge.jpg").write_bytes(encode(draw_face(np.random.default_rng(4), 112), ".jpg"))
    manifest = _manifest(folder / "pairs.csv", [
        {"pair_id": "p1", "image_a": "badge.jpg", "image_b": "gone.jpg", "hr_case": "HR-2026-17"}])
    done = subprocess.run([sys.executable, "-m", "faceq.producer", "compare", str(manifest), "--wait", "--no-progress",
                           "--job-id", "compare-hr"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    summary = client.job("compare-hr").wait(timeout=60)
    page = parse(client.storage.get_bytes(summary["outputs"]["report"]).decode())
    article = page.find("article", "item")
    assert article.attrs["data-item-id"] == "p1"
    fields = dict(zip([dt.text() for dt in article.find_all("dt")], [dd.text() for dd in article.find_all("dd")]))
    assert fields["hr_case"] == "HR-2026-17"
    captions = [span.text() for span in article.find_all("span", "source-uri")]
    assert len(captions) == 2 and captions[0].endswith("badge.jpg") and captions[1].endswith("gone.jpg")


class CountingEngine(Engine):
    """The real engine, counting the crops that reach it."""

    crops = 0

    def infer(self, crops):
        self.crops += len(crops)
        return super().infer(crops)


@pytest.fixture
def chunk_rows(tmp_path, redis_server):
    """Plans a compare job of ``items`` (one chunk) and returns (its rows, the counting engine)."""
    storage = open_storage((tmp_path / "store").as_uri())
    engine = CountingEngine(load_model(None, "ir_se_tiny", seed=2), "cpu", "fp32", max_batch=8)
    engine.crops = 0  # not the warm-up's
    processor = ChunkProcessor(Settings(io_threads=2), storage, Ledger.from_url(redis_server.url), engine, "t")

    def run(items: list[Item]):
        header = write_plan(Settings(), storage, items=items, source=str(tmp_path), job_id="compare-service",
                            options=JobOptions("compare", chunk_size=8), allowed_sources=(tmp_path.as_uri(),))
        return processor.rows(header, processor.items(header, 0)), engine

    yield run
    processor.close()


def test_a_photo_in_many_pairs_is_embedded_once_per_chunk(tmp_path, chunk_rows):
    rng = np.random.default_rng(0)
    for name in "abc":
        cv2.imwrite(str(tmp_path / f"{name}.png"), draw_face(rng, 112))
    pairs = [("ab", "a", "b"), ("ac", "a", "c"), ("bc", "b", "c"), ("aa", "a", "a")]
    items = [Item(pid, (tmp_path / f"{a}.png").as_uri(), {"image_b": (tmp_path / f"{b}.png").as_uri()})
             for pid, a, b in pairs]
    rows, engine = chunk_rows(items)
    assert engine.crops == 3 and [r.item_id for r in rows] == ["ab", "ac", "bc", "aa"]
    by_pair = {r.item_id: r for r in rows}
    assert by_pair["aa"].similarity == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(by_pair["ab"].embedding, by_pair["ac"].embedding)  # photo a's one embedding
    assert by_pair["ab"].similarity == pytest.approx(float(np.dot(by_pair["ab"].embedding, by_pair["ab"].embedding_b)))


def test_a_forged_pair_without_its_second_photo_is_an_error_row(tmp_path, chunk_rows):
    cv2.imwrite(str(tmp_path / "a.png"), draw_face(np.random.default_rng(0), 112))
    (row,), _ = chunk_rows([Item("p", (tmp_path / "a.png").as_uri(), {"note": "no image_b"})])
    assert row.decision == "error" and row.error.startswith("image_b: bad_uri")
