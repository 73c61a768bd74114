"""Counts and codes as a reviewer reads them: "1 pair", "2 pairs"; "Different people" for
``different_person`` (the code stays in a ``title`` and ``data-code`` for scripts and for
whoever greps review.csv). Pure strings: no storage, no HTML framework."""

from __future__ import annotations

from html import escape

from faceq.outputs.guidance import OTHER, guidance_for

_IRREGULAR = {"person": "people", "employee": "employees", "photo": "photos", "face": "faces"}
STATUS_WORDS = {"ok": "Face found"}  # no_face and error: the guidance titles


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 pair``, ``0 pairs``, ``2 pairs`` (``many``: a plural that is not ``word + s``)."""
    return f"{n} {word if n == 1 else many or _IRREGULAR.get(word, word + 's')}"


def code_words(code: str, decides: str | None = None) -> str:
    """The words for a status, decision or review-reason code (the code itself if it has none)."""
    if code in STATUS_WORDS:
        return STATUS_WORDS[code]
    guidance = guidance_for(code, decides)
    return code if guidance is OTHER else guidance.title


def code_label(code: str, decides: str | None = None) -> str:
    """HTML: the words, with the code kept in ``title`` and ``data-code``."""
    c = escape(str(code), quote=True)
    return f"<span title='{c}' data-code='{c}'>{escape(code_words(str(code), decides))}</span>"
