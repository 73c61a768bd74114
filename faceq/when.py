"""Times as people read them: ``2026-12-04 07:31:05 UTC`` on pages, the ISO form kept for machines.

Manifests give capture times as ISO strings (with an offset, or ``Z``); a page shows them in
the offset they were given in (a device's local time stays local), to the second.
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta


def parse_time(value) -> datetime | None:
    """A datetime from a datetime or an ISO string (``Z`` allowed); None when it is neither."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None


def readable_time(value) -> str:
    """``2026-12-04 07:31:05 UTC`` (or ``… +02:00``; no zone when none was given); text that is
    not a time comes back as it was."""
    when = parse_time(value)
    if when is None:
        return "" if value is None else str(value)
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    offset = when.utcoffset()
    if offset is None:
        return text
    if offset == timedelta(0):
        return f"{text} UTC"
    sign, offset = ("-", -offset) if offset < timedelta(0) else ("+", offset)
    hours, minutes = divmod(int(offset.total_seconds()) // 60, 60)
    return f"{text} {sign}{hours:02d}:{minutes:02d}"


def time_html(value) -> str:
    """A ``<time>`` element: readable text, the ISO form in ``datetime`` and on hover; plain
    escaped text for a value that is not a time."""
    when = parse_time(value)
    if when is None:
        return html.escape("" if value is None else str(value))
    iso = html.escape(when.isoformat(), quote=True)
    return f"<time datetime='{iso}' title='{iso}'>{html.escape(readable_time(when))}</time>"
