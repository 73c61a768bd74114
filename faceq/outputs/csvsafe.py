"""CSV cells a spreadsheet will not execute (OWASP's CSV-injection rule).

review.csv carries manifest fields and file names chosen by whoever wrote the manifest
or named the photo; a cell such as ``=HYPERLINK(…)`` or ``@cmd`` would run as a formula
when an operator opens the file. Text cells that start with a formula trigger get a
leading ``'`` so spreadsheets show them as text. Numbers faceq formats itself (ints,
floats) are left as they are: a negative score stays a number.
"""

from __future__ import annotations

from typing import Any, Iterable

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value: Any) -> Any:
    """``value`` made safe for a spreadsheet: text starting with ``= + - @``, tab or CR is
    prefixed with ``'``; anything that is not text (numbers, None) passes unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def inert_row(values: Iterable[Any]) -> list[Any]:
    """Every cell of a row through ``inert_cell``."""
    return [inert_cell(value) for value in values]


def write_csv_row(writer: Any, values: Iterable[Any]) -> None:
    """``writer.writerow`` (a ``csv.writer``) with every cell made inert."""
    writer.writerow(inert_row(values))
