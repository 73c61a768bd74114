"""Capture times read as times on pages (issue 26): ``2026-12-04 07:31:05 UTC``, the ISO form
kept in the ``<time>`` element's ``datetime`` and title."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from faceq.when import readable_time, time_html
from tests.dom import parse


def test_iso_strings_and_datetimes_read_as_times_in_their_own_offset():
    assert readable_time("2026-12-04T07:31:05Z") == "2026-12-04 07:31:05 UTC"
    assert readable_time("2026-12-04T07:31:05.123456+00:00") == "2026-12-04 07:31:05 UTC"
    assert readable_time("2026-12-04T07:31:05+02:00") == "2026-12-04 07:31:05 +02:00"
    assert readable_time("2026-12-04T07:31:05-05:30") == "2026-12-04 07:31:05 -05:30"
    assert readable_time(datetime(2026, 12, 4, 7, 31, 5, tzinfo=timezone(timedelta(hours=1)))) == \
        "2026-12-04 07:31:05 +01:00"
    assert readable_time("2026-12-04 07:31") == "2026-12-04 07:31:00"  # no zone given: none invented
    assert readable_time("yesterday morning") == "yesterday morning"  # not a time: as it was
    assert readable_time(None) == ""


def test_a_time_element_keeps_the_iso_form_and_escapes_what_is_not_a_time():
    element = parse(time_html("2026-12-04T07:31:05Z")).find("time")
    assert element.text() == "2026-12-04 07:31:05 UTC"
    assert element.attrs["datetime"] == element.attrs["title"] == "2026-12-04T07:31:05+00:00"
    assert time_html("<b>noon</b>") == "&lt;b&gt;noon&lt;/b&gt;"


def test_the_report_shows_capture_times_for_people(tmp_path):
    from faceq.outputs.report import render_report
    from faceq.storage.store import open_storage
    from faceq.outputs.review_queue import ReviewQueue
    from tests.test_review_queue import _flag, _summary

    queue = ReviewQueue("attendance")
    queue.add(_flag(1, "mismatch"), folded=False)
    page = render_report(_summary(1), queue, open_storage(tmp_path.as_uri()), decides="attendance")
    when = parse(page).find("article", "item").find("dd", "captured-at").find("time")
    assert when.text() == "2026-11-24 08:00:00 UTC" and when.attrs["datetime"] == "2026-11-24T08:00:00+00:00"
    assert "http-equiv='Content-Security-Policy'" in page
