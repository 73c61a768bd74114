"""The seed's trust rules turned into a review flag and reasons. Pure functions."""

from __future__ import annotations

from faceq.settings import ReviewThresholds


def review_reasons(status: str, quality: float | None, thresholds: ReviewThresholds) -> list[str]:
    """Why a person should look at this item; empty when the result can be trusted.

    - ``error``: the item could not be processed (its ``error`` column says why);
    - ``no_face``: nothing to recognise;
    - ``low_quality``: quality below the review threshold (seed: < 0.4 → similarity is not
      trustworthy, retake or review by hand).
    """
    if status == "error":
        return ["error"]
    if status == "no_face":
        return ["no_face"]
    if quality is None or quality < thresholds.review_quality:
        return ["low_quality"]
    return []
