"""The review rules at and around the seed's threshold."""

import pytest

from faceq.settings import ReviewThresholds
from models.decisions import review_reasons

DEFAULT = ReviewThresholds()


@pytest.mark.parametrize(
    ("status", "quality", "reasons"),
    [
        ("ok", 0.85, []),  # an ID photo
        ("ok", 0.4, []),  # exactly at the threshold: trusted
        ("ok", 0.3999, ["low_quality"]),
        ("ok", 0.19, ["low_quality"]),  # the cat
        ("ok", None, ["low_quality"]),
        ("no_face", None, ["no_face"]),
        ("error", None, ["error"]),
    ],
)
def test_review_reasons(status, quality, reasons):
    assert review_reasons(status, quality, DEFAULT) == reasons


def test_threshold_is_configurable():
    assert review_reasons("ok", 0.5, ReviewThresholds(review_quality=0.6)) == ["low_quality"]
