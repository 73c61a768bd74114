"""What a flagged item means and what to do about it, in words for HR and site managers.

Every decision of ``models/decisions.py`` (attendance and compare) and every review reason
(audits and attendance) has a plain-language explanation and a recommended action. The review
queue is grouped into sections by what a person has to do, most urgent first. Pure data and
string formatting: no torch, no storage.

``decides`` (``JobHeader.decides``) says which decisions a job's rows carry: ``"attendance"``,
``"compare"`` or None (audits, enrolment: sections by review reason).
"""

from __future__ import annotations

from dataclasses import dataclass

from faceq.outputs.placeholder import FETCH_HINT, is_placeholder


@dataclass(frozen=True)
class Guidance:
    title: str  # the section heading
    reason: str  # what happened, in plain language
    action: str  # what the reviewer should do
    short_action: str  # one or two words for the CSV and the badges (retake, check ID, re-enrol, …)


# One entry per attendance decision (faceq.models.decisions.DECISIONS) …
DECISION_GUIDANCE: dict[str, Guidance] = {
    "mismatch": Guidance(
        "Possible impersonation",
        "The photo is clear, but the face does not look like the claimed employee's enrolment photo.",
        "Check ID: compare the check-in photo with the enrolment photo and the closest candidates. Confirm only "
        "if it is the claimed employee; if it is someone else (a colleague checking in for them), reject it "
        "and follow up with the site manager.",
        "check ID"),
    "grey_zone": Guidance(
        "Unsure: needs a second look",
        "The face is only partly similar to the claimed employee, or the photo is of borderline quality.",
        "Compare with the enrolment photo. If it is the employee, confirm; if their enrolment photo is old or "
        "poor (glasses, beard, haircut, lighting), re-enrol them.",
        "compare / re-enrol"),
    "untrusted": Guidance(
        "Photo too poor to judge",
        "The photo is too poor for a decision (blurred, dark, backlit, turned away or covered).",
        "Ask for a retake, or check the person by hand. If many poor photos come from one camera, have the "
        "camera checked.",
        "retake"),
    "not_enrolled": Guidance(
        "Not enrolled",
        "The claimed employee has no usable enrolment photo in this gallery (new starter, wrong employee ID, "
        "or every enrolment photo was rejected).",
        "Check the employee ID on the check-in; if it is right, enrol the employee (faceq enroll … --update).",
        "enrol / check ID"),
    "no_face": Guidance(
        "No face found",
        "No face could be found in the photo.",
        "Ask for a retake facing the camera; if it keeps happening at one device, check its framing.",
        "retake"),
    "error": Guidance(
        "Unreadable photo",
        "The photo file could not be read (empty, cut off, not an image, too large).",
        "Check the device's upload and ask for a retake.",
        "retake / check device"),
    "match": Guidance(
        "Match",
        "The face matches the claimed employee.",
        "Nothing to do.",
        "none"),
}

# One entry per compare decision (faceq.models.decisions.COMPARE_DECISIONS): two photos, no claimed employee.
COMPARE_GUIDANCE: dict[str, Guidance] = {
    "different": Guidance(
        "Different people",
        "Both photos are clear, but the faces do not look like the same person.",
        "Check ID: look at both photos. If they are the same person after all (age, glasses, beard), confirm; "
        "if not, reject the pair and follow up (wrong badge photo, someone else's ID).",
        "check ID"),
    "grey_zone": Guidance(
        "Unsure: needs a second look",
        "The faces are only partly similar, or one of the photos is of borderline quality.",
        "Compare the two photos yourself or confirm the person another way (ID check, a new photo).",
        "compare / confirm"),
    "untrusted": Guidance(
        "Photo too poor to judge",
        "At least one of the two photos is too poor for a decision (blurred, dark, backlit, turned away, covered).",
        "Retake the poorer photo (see both qualities), or check the person by hand.",
        "retake"),
    "no_face": Guidance(
        "No face found",
        "No face could be found in one of the two photos.",
        "Check which photo has no face (face count 0) and retake it.",
        "retake"),
    "error": Guidance(
        "Unreadable photo",
        "One of the two photo files could not be read (missing, empty, cut off, not an image, too large).",
        "The error names image_a or image_b: fix or replace that file and run the pair again.",
        "fix file"),
    "same": Guidance(
        "Same person",
        "Both photos show the same person.",
        "Nothing to do.",
        "none"),
}

# … and one per review reason (faceq.models.decisions.review_reasons and verify's reasons).
REASON_GUIDANCE: dict[str, Guidance] = {
    "possible_impersonation": DECISION_GUIDANCE["mismatch"],
    "different_person": COMPARE_GUIDANCE["different"],
    "grey_zone": DECISION_GUIDANCE["grey_zone"],
    "not_enrolled": DECISION_GUIDANCE["not_enrolled"],
    "no_face": DECISION_GUIDANCE["no_face"],
    "error": DECISION_GUIDANCE["error"],
    "low_quality": Guidance(
        "Low quality",
        "The photo's quality score is low: blurred, dark, backlit, turned away, covered or very small.",
        "Retake the photo. If many low-quality photos come from one camera, check the camera (night/IR mode, "
        "focus, lens, backlight).",
        "retake"),
    "likely_not_a_face": Guidance(
        "Probably not a face",
        "The score is so low that this is probably not a face at all (an object, an animal, an empty frame).",
        "Check what the camera sees; discard or retake.",
        "check camera"),
    "multiple_faces": Guidance(
        "Several faces",
        "More than one face is in the photo; the row is about one of them (see the face number and the box).",
        "Check that the boxed face is the right person; retake with one person in the frame if not.",
        "check face"),
}

OTHER = Guidance("Other", "Flagged for review.", "Look at the photo.", "review")

# Sections, most urgent first: rows with decisions by decision, audit rows by their first reason in this order.
ATTENDANCE_SECTIONS = ("mismatch", "grey_zone", "not_enrolled", "untrusted", "no_face", "error")
COMPARE_SECTIONS = ("different", "grey_zone", "untrusted", "no_face", "error", "multiple_faces")
AUDIT_SECTIONS = ("error", "no_face", "likely_not_a_face", "low_quality", "multiple_faces")


# Jobs without decisions (an archive audit above all; also enrolment and gallery-less check-ins):
# the photo may be a file in a collection, not a check-in at a device, and "ask for a retake
# facing the camera" means nothing for a scanned archive or a cat.
AUDIT_GUIDANCE: dict[str, Guidance] = {
    "error": Guidance(
        "Unreadable file",
        "The image file could not be read (missing, empty, cut off, not an image, too large).",
        "Check the file: replace it with a readable copy (re-export it from the original), or remove it from "
        "the set.",
        "fix file"),
    "no_face": Guidance(
        "No face found",
        "No face could be found in the image (not a portrait, a face too small or turned away, or not a "
        "person at all).",
        "Check the image: if a face photo belongs here, replace it with one where the face is clearly visible "
        "(a check-in or enrolment: ask for a retake); otherwise remove it from the set.",
        "check / replace"),
    "likely_not_a_face": Guidance(
        "Probably not a face",
        "The score is so low that this is probably not a face at all (an object, an animal, an empty frame).",
        "Check the image: replace it with a face photo if one belongs here, else remove it from the set.",
        "check / replace"),
}


def _decision_guidance(decides: str | None) -> dict[str, Guidance]:
    return {"attendance": DECISION_GUIDANCE, "compare": COMPARE_GUIDANCE}.get(decides or "", AUDIT_GUIDANCE)


def section_of(row: dict, decides: str | None) -> str:
    """The review-queue section a flagged row belongs to (a ``same`` pair that is flagged goes
    by its reason: several faces)."""
    decisions = {"attendance": DECISION_GUIDANCE, "compare": COMPARE_GUIDANCE}.get(decides or "")
    decision = row.get("decision")
    if decisions and decision and decision != "same":  # jobs without decisions go by their reasons
        return decision if decision in decisions else "other"
    reasons = row.get("review_reasons") or []
    for reason in AUDIT_SECTIONS:
        if reason in reasons:
            return reason
    return reasons[0] if reasons and reasons[0] in REASON_GUIDANCE else "other"


def section_order(decides: str | None) -> tuple[str, ...]:
    order = {"attendance": ATTENDANCE_SECTIONS, "compare": COMPARE_SECTIONS}.get(decides or "", AUDIT_SECTIONS)
    return order + ("other",)


def guidance_for(section: str, decides: str | None = None) -> Guidance:
    return _decision_guidance(decides).get(section) or DECISION_GUIDANCE.get(section) or \
        REASON_GUIDANCE.get(section) or OTHER


# Sections whose flag comes from the RTS model's numbers (quality, similarity): placeholders when
# its weights are random. Unreadable files, missing faces (YuNet) and unknown employees stay real.
MODEL_SECTIONS = {"mismatch", "grey_zone", "untrusted", "match", "different", "same", "low_quality",
                  "likely_not_a_face", "other"}


def placeholder_explanation(row: dict, decides: str | None) -> tuple[str, str]:
    """What a flag made by random weights is: nothing about the photo or the person."""
    numbers = [f"quality {_num(row.get('quality'))}"] + \
        ([f"and {_num(row.get('quality_b'))}"] if decides == "compare" else []) + \
        ([f"similarity {_num(row.get('similarity'))}"] if row.get("similarity") is not None else [])
    reason = (f"Placeholder result: the model ran with random weights, so this flag says nothing about the photo "
              f"or the person ({', '.join(numbers)} are not real scores).")
    return reason, f"Do not act on it: {FETCH_HINT}."


def explain(row: dict, decides: str | None, thresholds: dict | None = None) -> tuple[str, str]:
    """(plain-language reason, recommended action) for one flagged row, with its numbers (a
    placeholder's, when random weights made it)."""
    section = section_of(row, decides)
    if section in MODEL_SECTIONS and is_placeholder(row.get("model_id")):
        return placeholder_explanation(row, decides)
    guide = guidance_for(section, decides)
    reason = guide.reason
    similarity = row.get("similarity")
    quality = _num(row.get("quality")) + (f" and {_num(row.get('quality_b'))}" if decides == "compare" else "")
    if section in ("mismatch", "different") and similarity is not None:
        reason += f" Similarity {similarity:.2f}"
        if thresholds:
            reason += f" (below {thresholds.get('mismatch_similarity')})"
        reason += "."
    elif section == "grey_zone" and similarity is not None:
        reason += f" Similarity {similarity:.2f}, quality {quality}."
    elif section == "untrusted" and decides == "compare":
        reason += f" Quality {quality}" + (f" (below {thresholds.get('review_quality')})." if thresholds else ".")
    elif section in ("untrusted", "low_quality", "likely_not_a_face") and row.get("quality") is not None:
        reason += f" Quality {row['quality']:.2f}" + (f" (below {thresholds.get('review_quality')})."
                                                     if thresholds else ".")
    if section in ("mismatch", "grey_zone") and row.get("best_candidate_id") and \
            row.get("best_candidate_id") != row.get("employee_id"):
        reason += f" Looks most like {row['best_candidate_id']}."
    if section == "error" and row.get("error"):  # the code, never the message (it may name a path)
        causes = row["error"].split("; ") if decides == "compare" else [row["error"]]
        keep = 2 if decides == "compare" else 1  # "image_b: unreadable"
        reason += f" ({'; '.join(':'.join(c.split(':', keep)[:keep]) for c in causes)})"
    extra = [r for r in (row.get("review_reasons") or []) if r != section and r in REASON_GUIDANCE
             and REASON_GUIDANCE[r] is not guide]
    if decides == "compare" and ("multiple_faces" in extra or section == "multiple_faces"):
        reason += (f" The largest face was compared; the photos have {row.get('face_count') or 0} and "
                   f"{row.get('face_count_b') or 0} faces.")
        extra = [r for r in extra if r != "multiple_faces"]
    elif "multiple_faces" in extra or section == "multiple_faces":
        reason += f" This row is face {(row.get('face_index') or 0) + 1} of {row.get('face_count') or '?'} (boxed)."
        extra = [r for r in extra if r != "multiple_faces"]
    for other in extra:
        reason += f" Also: {REASON_GUIDANCE[other].title.lower()}."
    return reason, guide.action


def _num(value) -> str:
    return "?" if value is None else f"{value:.2f}"
