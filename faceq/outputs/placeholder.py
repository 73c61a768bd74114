"""Saying so wherever a person decides from numbers a placeholder model made.

Without a checkpoint the worker runs the real network with seeded random weights
(``model_id`` ``rts-…-random-seed0``), and ``FACEQ_MODEL_ARCH=null`` runs a zero-cost stand-in
(``null-standin-NOT-A-MODEL``). Both produce well-formed rows whose qualities, similarities
and decisions mean nothing; every surface people read (summary, report, review page and CSV,
status, the client's rows) asks this module, so the warning reads the same everywhere. Keyed on
``model_id`` alone: it travels with every row, whoever reads it later.
"""

from __future__ import annotations

from typing import Iterable

FETCH_HINT = "for real results run `faceq models fetch` (or set FACEQ_MODEL_WEIGHTS) and run the job again"
RANDOM_WARNING = ("PLACEHOLDER: made with seeded RANDOM weights (no RTS checkpoint installed), not face recognition: "
                  "the embeddings, quality scores, similarities and decisions mean nothing; " + FETCH_HINT + ".")
STAND_IN_WARNING = ("PLACEHOLDER: made by the zero-cost STAND-IN (FACEQ_MODEL_ARCH=null), not a model: the numbers "
                    "measure the data path only.")
ITEM_NOTE = "Placeholder: random weights, not a real result."


def is_random(model_id: str | None) -> bool:
    return bool(model_id) and "-random-" in model_id


def is_stand_in(model_id: str | None) -> bool:
    return bool(model_id) and model_id.startswith("null-standin")


def is_placeholder(model_id: str | None) -> bool:
    return is_random(model_id) or is_stand_in(model_id)


def warning_for(model_ids: Iterable[str | None]) -> str | None:
    """The one-paragraph warning for results made by these models, or None when all are real."""
    ids = [m for m in model_ids if m]
    if any(is_random(m) for m in ids):
        return RANDOM_WARNING
    if any(is_stand_in(m) for m in ids):
        return STAND_IN_WARNING
    return None


def marked(row: dict) -> dict:
    """``row`` (a client result) with ``random_weights`` and ``warning`` (None for real weights)."""
    model_id = row.get("model_id")
    return {**row, "random_weights": is_random(model_id), "warning": warning_for([model_id])}
