"""Enrolment templates, gallery versions, duplicates and 1:N matching on the device."""

import numpy as np
import pytest
import torch

from faceq.errors import JobError
from faceq.gallery import GalleryStore, build_enrolment, likely_duplicates
from faceq.storage.store import open_storage
from faceq.workers.galleries import DeviceGallery, GalleryCache


def _unit(*values):
    vector = np.zeros(512, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def _row(employee, item, quality, embedding=None, status="ok", error=None):
    return {"employee_id": employee, "item_id": item, "status": status, "error": error, "quality": quality,
            "embedding": embedding}


def test_template_is_the_quality_weighted_mean_of_usable_images():
    rows = [
        _row("alice", "a1", 0.9, _unit(1, 0)),
        _row("alice", "a2", 0.6, _unit(0, 1)),  # at the threshold: used
        _row("alice", "a3", 0.59, _unit(0, 0, 1)),  # below: rejected
        _row("bob", "b1", None, status="error", error="truncated: JPEG data ends early"),
        _row("bob", "b2", None, status="no_face"),
        _row("carol", "c1", 0.8, _unit(1, 1)),
    ]
    enrolment = build_enrolment(rows, enrol_quality=0.6, duplicate_similarity=0.99, model_id="m1")
    table = {r["employee_id"]: r for r in enrolment.table.to_pylist()}
    assert set(table) == {"alice", "carol"}
    expected = 0.9 * _unit(1, 0) + 0.6 * _unit(0, 1)
    np.testing.assert_allclose(table["alice"]["template"], expected / np.linalg.norm(expected), atol=1e-6)
    assert table["alice"]["n_images"] == 2 and table["alice"]["mean_quality"] == pytest.approx(0.75)
    assert table["alice"]["model_id"] == "m1"
    assert enrolment.without_usable_image == ["bob"]
    reasons = {r["item_id"]: r["reason"] for r in enrolment.rejected}
    assert reasons == {"a3": "low_quality: 0.590 < 0.6", "b1": "truncated: JPEG data ends early", "b2": "no_face"}


def test_likely_duplicates_are_pairs_of_close_templates_closest_first():
    templates = np.stack([_unit(1, 0), _unit(1, 0.01), _unit(0, 1), _unit(1, 0.2)])
    pairs = likely_duplicates(["a", "b", "c", "d"], templates, threshold=0.95)
    assert [(p["employee_a"], p["employee_b"]) for p in pairs] == [("a", "b"), ("b", "d"), ("a", "d")]
    assert pairs[0]["similarity"] > pairs[-1]["similarity"] > 0.95


def test_versions_are_immutable_and_current_points_at_the_newest(tmp_path):
    store = GalleryStore(open_storage(tmp_path.as_uri()))
    with pytest.raises(JobError, match="no gallery 'staff'.*enrol it first"):
        store.current_version("staff")
    first = build_enrolment([_row("alice", "a1", 0.9, _unit(1, 0))], 0.6, 0.9, "m1")
    second = build_enrolment([_row("alice", "a1", 0.9, _unit(0, 1)), _row("bob", "b1", 0.7, _unit(1, 1))], 0.6, 0.9,
                             "m1")
    assert store.publish("staff", first, {}) == 1
    v1_bytes = store.storage.get_bytes("galleries/staff/v1/gallery.parquet")
    assert store.publish("staff", second, {}) == 2
    assert store.current_version("staff") == 2 and store.versions("staff") == [1, 2]
    assert store.storage.get_bytes("galleries/staff/v1/gallery.parquet") == v1_bytes
    loaded = store.load("staff", 1)
    assert loaded.employee_ids == ["alice"] and loaded.model_id == "m1" and loaded.ref == "staff@v1"
    np.testing.assert_allclose(loaded.templates[0], _unit(1, 0))


def test_one_to_one_and_one_to_n_ranking_by_similarity_times_quality(tmp_path):
    store = GalleryStore(open_storage(tmp_path.as_uri()))
    rows = [_row("alice", "a", 0.9, _unit(1, 0)), _row("bob", "b", 0.65, _unit(1, 0.3)),
            _row("carol", "c", 0.99, _unit(0, 1))]
    store.publish("staff", build_enrolment(rows, 0.6, 0.999, "m1"), {})
    gallery = DeviceGallery(store.load("staff", 1), torch.device("cpu"))
    probe = _unit(1, 0.3)  # bob's own vector, but alice is nearly as close and better enrolled
    matches = gallery.match(np.stack([probe, _unit(0, 1)]), ["bob", "nobody"], top_k=2)
    assert matches.claimed_similarity[0] == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(matches.claimed_similarity[1])
    similarity_alice = float(probe @ _unit(1, 0))
    assert matches.top_ids[0] == ["alice", "bob"]  # 0.958 × 0.9 > 1.0 × 0.65
    np.testing.assert_allclose(matches.top_scores[0], [similarity_alice * 0.9, 0.65], rtol=1e-5)
    np.testing.assert_allclose(matches.top_similarities[0], [similarity_alice, 1.0], rtol=1e-5)
    assert matches.top_ids[1][0] == "carol"


def test_a_gallery_is_loaded_once_per_version(tmp_path):
    store = GalleryStore(open_storage(tmp_path.as_uri()))
    store.publish("staff", build_enrolment([_row("alice", "a", 0.9, _unit(1, 0))], 0.6, 0.9, "m1"), {})
    cache = GalleryCache(store, torch.device("cpu"))
    first = cache.get("staff", 1)
    for _ in range(5):
        assert cache.get("staff", 1) is first
    assert cache.loads == 1


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65])
def test_gallery_names_that_could_escape_their_folder_are_refused(name):
    from faceq.gallery import validate_gallery_name

    with pytest.raises(JobError, match="gallery name"):
        validate_gallery_name(name)
