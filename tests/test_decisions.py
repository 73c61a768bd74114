"""The trust rules at and around every threshold (defaults are the seed's)."""

import pytest

from faceq.settings import TrustThresholds
from faceq.models.decisions import compare_pair, review_reasons, verify

T = TrustThresholds()


@pytest.mark.parametrize(
    ("status", "quality", "faces", "reasons"),
    [
        ("ok", 0.85, 1, []),  # an ID photo
        ("ok", 0.4, 1, []),  # exactly at the review threshold: trusted
        ("ok", 0.3999, 1, ["low_quality"]),
        ("ok", 0.42, 1, []),  # the shaky CCTV frame is still usable
        ("ok", 0.2, 1, ["low_quality"]),  # at the not-a-face threshold: only low quality
        ("ok", 0.19, 1, ["low_quality", "likely_not_a_face"]),  # the cat
        ("ok", 0.85, 2, ["multiple_faces"]),
        ("ok", 0.3, 3, ["multiple_faces", "low_quality"]),
        ("ok", None, 1, ["low_quality"]),
        ("no_face", None, 0, ["no_face"]),
        ("error", None, 0, ["error"]),
    ],
)
def test_audit_review_reasons(status, quality, faces, reasons):
    assert review_reasons(status, quality, faces, T) == reasons


@pytest.mark.parametrize(
    ("quality", "similarity", "decision", "reasons"),
    [
        (0.85, 0.80, "match", ()),
        (0.60, 0.4501, "match", ()),  # both at/over their thresholds
        (0.60, 0.45, "grey_zone", ("grey_zone",)),  # similarity must be above 0.45
        (0.5999, 0.90, "grey_zone", ("grey_zone",)),  # quality just under 0.6
        (0.40, 0.90, "grey_zone", ("grey_zone",)),  # at the review threshold: trusted, not confident
        (0.3999, 0.90, "untrusted", ("low_quality",)),
        (0.19, 0.10, "untrusted", ("low_quality",)),  # low quality wins over any similarity
        (0.85, 0.35, "grey_zone", ("grey_zone",)),  # 0.35 is inside the grey band
        (0.85, 0.3499, "mismatch", ("possible_impersonation",)),
        (0.60, 0.10, "mismatch", ("possible_impersonation",)),
        (0.55, 0.10, "grey_zone", ("grey_zone",)),  # too unsure to accuse anyone
    ],
)
def test_verification_decisions(quality, similarity, decision, reasons):
    verdict = verify("ok", quality, similarity, True, T)
    assert (verdict.decision, verdict.reasons) == (decision, reasons)
    assert verdict.needs_review == (decision != "match")


@pytest.mark.parametrize(
    ("status", "enrolled", "decision"),
    [("error", True, "error"), ("no_face", True, "no_face"), ("ok", False, "not_enrolled"),
     ("error", False, "error")],
)
def test_outcomes_with_reasons_of_their_own(status, enrolled, decision):
    verdict = verify(status, 0.9 if status == "ok" else None, None, enrolled, T)
    assert verdict.decision == decision and verdict.reasons == (decision,) and verdict.needs_review


def test_thresholds_are_configurable():
    strict = TrustThresholds(match_quality=0.8, match_similarity=0.6, mismatch_similarity=0.5, review_quality=0.5)
    assert verify("ok", 0.7, 0.9, True, strict).decision == "grey_zone"
    assert verify("ok", 0.85, 0.55, True, strict).decision == "grey_zone"
    assert verify("ok", 0.85, 0.49, True, strict).decision == "mismatch"
    assert review_reasons("ok", 0.45, 1, strict) == ["low_quality"]


def test_thresholds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FACEQ_MATCH_SIMILARITY", "0.5")
    monkeypatch.setenv("FACEQ_ENROL_QUALITY", "0.7")
    loaded = TrustThresholds.from_env()
    assert loaded.match_similarity == 0.5 and loaded.enrol_quality == 0.7 and loaded.review_quality == 0.4


@pytest.mark.parametrize(
    ("quality_a", "quality_b", "similarity", "decision", "reasons"),
    [
        (0.85, 0.90, 0.80, "same", ()),
        (0.60, 0.60, 0.4501, "same", ()),  # both photos at the confidence threshold
        (0.60, 0.90, 0.45, "grey_zone", ("grey_zone",)),  # similarity must be above 0.45
        (0.90, 0.5999, 0.90, "grey_zone", ("grey_zone",)),  # one photo just under 0.6
        (0.40, 0.90, 0.90, "grey_zone", ("grey_zone",)),  # at the review threshold: trusted, not confident
        (0.90, 0.3999, 0.90, "untrusted", ("low_quality",)),  # the worse photo decides
        (0.3999, 0.90, 0.10, "untrusted", ("low_quality",)),  # low quality wins over any similarity
        (0.19, 0.19, 0.99, "untrusted", ("low_quality",)),
        (0.85, 0.85, 0.35, "grey_zone", ("grey_zone",)),  # 0.35 is inside the grey band
        (0.85, 0.85, 0.3499, "different", ("different_person",)),
        (0.60, 0.60, -0.20, "different", ("different_person",)),
        (0.55, 0.90, 0.10, "grey_zone", ("grey_zone",)),  # too unsure to call them different
        (None, 0.90, 0.90, "untrusted", ("low_quality",)),
    ],
)
def test_compare_decisions_at_every_threshold(quality_a, quality_b, similarity, decision, reasons):
    verdict = compare_pair("ok", quality_a, "ok", quality_b, similarity, T)
    assert (verdict.decision, verdict.reasons) == (decision, reasons)
    assert verdict.needs_review == (decision != "same")
    swapped = compare_pair("ok", quality_b, "ok", quality_a, similarity, T)  # the order of the photos does not matter
    assert (swapped.decision, swapped.reasons) == (decision, reasons)


@pytest.mark.parametrize(
    ("status_a", "status_b", "decision"),
    [("error", "ok", "error"), ("ok", "error", "error"), ("error", "no_face", "error"),
     ("no_face", "ok", "no_face"), ("ok", "no_face", "no_face"), ("no_face", "no_face", "no_face")],
)
def test_compare_outcomes_of_unusable_photos(status_a, status_b, decision):
    verdict = compare_pair(status_a, 0.9 if status_a == "ok" else None, status_b, 0.9 if status_b == "ok" else None,
                      None, T)
    assert verdict.decision == decision and verdict.reasons == (decision,) and verdict.needs_review


def test_compare_with_several_faces_goes_to_a_person_even_when_same():
    verdict = compare_pair("ok", 0.9, "ok", 0.9, 0.9, T, multiple_faces=True)
    assert verdict.decision == "same" and verdict.reasons == ("multiple_faces",) and verdict.needs_review


def test_compare_thresholds_come_from_the_settings():
    strict = TrustThresholds(match_quality=0.8, match_similarity=0.6)
    assert compare_pair("ok", 0.7, "ok", 0.9, 0.9, strict).decision == "grey_zone"
    assert compare_pair("ok", 0.85, "ok", 0.9, 0.55, strict).decision == "grey_zone"
    assert compare_pair("ok", 0.85, "ok", 0.9, 0.61, strict).decision == "same"
