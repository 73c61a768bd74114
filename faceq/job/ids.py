"""Employee ids a reviewer can tell apart: one spelling per id, no invisible characters, no look-alikes.

An employee id is shown to people (report, review page, review.csv) who act on it: ``e1``,
Cyrillic ``е1``, ``e\\u200b1`` (a zero-width space) and an id behind a right-to-left override
must not be three employees that look like one. So every id is normalised to Unicode NFC and
refused when it holds a control, format (Cf: zero-width and bidirectional controls),
surrogate, private-use or unassigned character or a line/paragraph separator; and within
one gallery two ids whose *skeletons* are equal are refused with both named.

The skeleton follows Unicode TS #39 (NFD, each character replaced by the prototype of its
confusable class, NFD again). The confusable classes come from the ``confusable-homoglyphs``
package (its copy of Unicode's confusables.txt): its single-character pairs are joined into
classes, each represented by its lowest code point. Its multi-character pairs (``rn`` ~ ``m``)
are not used, so those stay distinct; among ASCII letters and digits only ``0``/``O`` and
``1``/``I``/``l`` are look-alikes.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Iterable

from faceq.errors import BadInputError

_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def shown(value: str) -> str:
    """``value`` quoted for a message, non-ASCII characters also written out (``'е1' = '\\u04351'``)."""
    return repr(value) if value.isascii() else f"{value!r} = {ascii(value)}"


def normalise_employee_id(value: str) -> str:
    """The NFC form of ``value``; ``BadInputError("bad_id")`` naming the first refused character."""
    value = unicodedata.normalize("NFC", value)
    for char in value:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            name = unicodedata.name(char, "unassigned or control")
            raise BadInputError("bad_id", f"{ascii(value)} contains U+{ord(char):04X} ({name}), an invisible, "
                                          "control or text-direction character: remove it")
    return value


@functools.lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """Character → the lowest code point of its confusable class (loaded once, 0.2 s)."""
    from confusable_homoglyphs.utils import load

    parent: dict[str, str] = {}

    def root(char: str) -> str:
        while parent.get(char, char) != char:
            char = parent[char] = parent.get(parent[char], parent[char])
        return char

    for char, homoglyphs in load("confusables.json").items():
        if len(char) != 1:
            continue
        for glyph in homoglyphs:
            if len(glyph["c"]) == 1:
                a, b = root(char), root(glyph["c"])
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {char: root(char) for char in parent}


def skeleton(value: str) -> str:
    """Two ids that look alike have the same skeleton (Unicode TS #39, single characters)."""
    prototypes = _prototypes()
    mapped = "".join(prototypes.get(c, c) for c in unicodedata.normalize("NFD", value))
    return unicodedata.normalize("NFD", mapped)


class LookAlikes:
    """Ids seen so far by skeleton: ``add`` answers the earlier, different id that looks the same."""

    def __init__(self):
        self._by_skeleton: dict[str, tuple[str, object]] = {}

    def add(self, employee_id: str, where: object = None) -> tuple[str, object] | None:
        """(earlier id, where it was seen) when ``employee_id`` looks like another id; else None."""
        key = skeleton(employee_id)
        earlier = self._by_skeleton.setdefault(key, (employee_id, where))
        return earlier if earlier[0] != employee_id else None


def look_alike_pair(employee_ids: Iterable[str], touched: set[str] | None = None) -> tuple[str, str] | None:
    """The first two different ids of ``employee_ids`` that look alike (one of them in ``touched``
    when given: a delta enrolment answers for its own employees, not for older versions)."""
    groups: dict[str, list[str]] = {}
    for employee_id in employee_ids:
        groups.setdefault(skeleton(employee_id), []).append(employee_id)
    for ids in groups.values():
        distinct = sorted(set(ids))
        if len(distinct) > 1 and (touched is None or touched.intersection(distinct)):
            new = [i for i in distinct if touched is None or i in touched]
            return new[0], next(i for i in distinct if i != new[0])
    return None
