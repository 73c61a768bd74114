"""What the pages say, looked at in Chromium (issue 26): an audit without faces has no empty
chart, an unreadable file in an archive is not "the device's upload", a compare pair is not
from a "(top level)" source. Every page keeps its CSP."""

from __future__ import annotations

from faceq.outputs.guidance import explain
from faceq.outputs.report import render_report
from faceq.storage.store import open_storage
from faceq.outputs.review_queue import ReviewQueue
from tests.dom import parse
from tests.test_review_queue import _summary


def _page(tmp_path, kind: str, decides: str | None, rows: list[dict], histogram_counts: list[int]) -> str:
    queue = ReviewQueue(decides)
    for row in rows:
        queue.add(row, folded=False)
    summary = _summary(len(rows)) | {"kind": kind, "gallery": None}
    summary["quality"] = {"histogram": {"edges": [0.0, 0.5, 1.0], "counts": histogram_counts}}
    return render_report(summary, queue, open_storage(tmp_path.as_uri()), decides=decides)


def _row(item_id: str, **extra) -> dict:
    return {"item_id": item_id, "source_uri": None, "status": "error", "error": "empty: the file is empty",
            "quality": None, "review_reasons": ["error"], "face_count": 0, "face_index": 0, "bbox": None,
            "landmarks": None} | extra


def test_an_audit_without_faces_says_so_instead_of_an_empty_chart(tmp_path):
    page = _page(tmp_path, "audit", None, [_row("empty.jpg")], [0, 0])
    dom = parse(page)
    assert dom.find("p", "no-quality").text().startswith("No face was scored")
    assert dom.find("img", alt="quality histogram") is None
    assert "http-equiv='Content-Security-Policy'" in page
    with_faces = parse(_page(tmp_path, "audit", None, [_row("empty.jpg")], [0, 3]))
    assert with_faces.find("img", alt="quality histogram") is not None


def test_an_unreadable_file_in_an_audit_is_about_the_file_not_a_device():
    reason, action = explain(_row("scan-0001.tif"), None)
    assert "device" not in action and action.startswith("Check the file")
    _, attendance_action = explain(_row("r1", decision="error"), "attendance")
    assert "device" in attendance_action  # a check-in still is


def test_a_compare_page_counts_pairs_and_names_no_source_folder(tmp_path):
    row = _row("p1", decision="error", source_uri="file:///a.jpg", source_uri_b="file:///b.jpg",
               extra=[("hr_case", "HR-9")])
    dom = parse(_page(tmp_path, "compare", "compare", [row], [0, 0]))
    assert "1 pair → 1 row ·" in dom.find("p", "muted").text()
    article = dom.find("article", "item")
    assert [dt.text() for dt in article.find_all("dt")][:2] == ["Pair", "hr_case"]
    assert [s.text() for s in article.find_all("span", "source-uri")] == ["file:///a.jpg", "file:///b.jpg"]


def test_counts_are_in_words_with_the_code_kept_for_scripts_and_in_the_right_number(tmp_path):
    rows = [_row("p1", status="ok", decision="different", review_reasons=["different_person"]),
            _row("p2", status="no_face", decision="no_face", review_reasons=["no_face"])]
    queue = ReviewQueue("compare")
    for row in rows:
        queue.add(row, folded=False)
    summary = _summary(2) | {"kind": "compare", "gallery": None, "n_items": 2, "n_rows": 2}
    summary["counts"] |= {"status": {"ok": 1, "no_face": 1}, "decision": {"different": 1, "no_face": 1},
                          "review_reasons": {"different_person": 1, "no_face": 1}, "needs_review": 2}
    page = render_report(summary, queue, open_storage(tmp_path.as_uri()), decides="compare")
    dom = parse(page)
    cells = {span.attrs["data-code"]: (span.attrs["title"], span.text()) for span in dom.find_all("span")
             if "data-code" in span.attrs}
    assert cells["different_person"] == ("different_person", "Different people")
    assert cells["different"][1] == "Different people" and cells["no_face"][1] == "No face found"
    assert cells["ok"][1] == "Face found"
    text = dom.text()
    assert "different_person" not in text and "2 pairs → 2 rows" in text and "2 items need review" in text
    assert "2 items to review" in text and "(s)" not in text
    one = parse(render_report(_summary(1) | {"kind": "audit", "gallery": None}, ReviewQueue(None),
                              open_storage(tmp_path.as_uri()), decides=None)).text()
    assert "1 item → 1 row" in one and "1 item needs review" in one and "1 item to review" in one
    assert "http-equiv='Content-Security-Policy'" in page
