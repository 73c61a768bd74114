"""The seed's trust rules turned into decisions and review reasons. Pure functions.

Audits flag what a person should look at; attendance decides whether a check-in is the
employee it claims to be; compare decides whether two photos show the same person.
Thresholds (``TrustThresholds``) default to the seed's:
quality < 0.4 untrusted, ≥ 0.6 with similarity > 0.45 a match, similarity < 0.35 a
possible impersonation, anything between a grey zone.
"""

from __future__ import annotations

from dataclasses import dataclass

from faceq.settings import TrustThresholds

DECISIONS = ("match", "mismatch", "grey_zone", "untrusted", "not_enrolled", "no_face", "error")
COMPARE_DECISIONS = ("same", "different", "grey_zone", "untrusted", "no_face", "error")


def review_reasons(status: str, quality: float | None, face_count: int, thresholds: TrustThresholds) -> list[str]:
    """Why a person should look at this photo; empty when it is fine.

    ``error`` (unusable file), ``no_face``, ``multiple_faces``, ``low_quality`` (below the
    review threshold: the embedding is not trustworthy) and, for very low scores,
    ``likely_not_a_face`` (the seed's cat walking past the camera).
    """
    if status == "error":
        return ["error"]
    if status == "no_face":
        return ["no_face"]
    reasons = []
    if face_count > 1:
        reasons.append("multiple_faces")
    if quality is None or quality < thresholds.review_quality:
        reasons.append("low_quality")
    if quality is not None and quality < thresholds.not_a_face_quality:
        reasons.append("likely_not_a_face")
    return reasons


@dataclass(frozen=True)
class Verdict:
    decision: str
    reasons: tuple[str, ...]

    @property
    def needs_review(self) -> bool:
        """Every decision but a clean match (or a clean ``same``) carries a reason."""
        return bool(self.reasons)


def verify(
    status: str, quality: float | None, similarity: float | None, enrolled: bool, thresholds: TrustThresholds
) -> Verdict:
    """1:1 decision for a check-in against the claimed employee's template."""
    if status == "error":
        return Verdict("error", ("error",))
    if status == "no_face":
        return Verdict("no_face", ("no_face",))
    if not enrolled:
        return Verdict("not_enrolled", ("not_enrolled",))
    if quality is None or quality < thresholds.review_quality:
        return Verdict("untrusted", ("low_quality",))
    if quality >= thresholds.match_quality:
        if similarity > thresholds.match_similarity:
            return Verdict("match", ())
        if similarity < thresholds.mismatch_similarity:
            return Verdict("mismatch", ("possible_impersonation",))
    return Verdict("grey_zone", ("grey_zone",))


def compare_pair(status_a: str, quality_a: float | None, status_b: str, quality_b: float | None,
            similarity: float | None, thresholds: TrustThresholds, multiple_faces: bool = False) -> Verdict:
    """1:1 decision for two photos (the seed's compare): the pair is only as trustworthy as
    its worse photo. Either below ``review_quality`` → untrusted; both at ``match_quality``
    or more → same above ``match_similarity``, different below ``mismatch_similarity``;
    everything between is a grey zone. ``multiple_faces`` (the largest face of a photo with
    several was compared) adds a reason, so even ``same`` goes to a person."""
    if "error" in (status_a, status_b):
        return Verdict("error", ("error",))
    if "no_face" in (status_a, status_b):
        return Verdict("no_face", ("no_face",))
    extra = ("multiple_faces",) if multiple_faces else ()
    worse = None if quality_a is None or quality_b is None else min(quality_a, quality_b)
    if worse is None or similarity is None or worse < thresholds.review_quality:
        return Verdict("untrusted", ("low_quality",) + extra)
    if worse >= thresholds.match_quality:
        if similarity > thresholds.match_similarity:
            return Verdict("same", extra)
        if similarity < thresholds.mismatch_similarity:
            return Verdict("different", ("different_person",) + extra)
    return Verdict("grey_zone", ("grey_zone",) + extra)
