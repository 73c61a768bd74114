"""Per-source statistics, camera alerts and what they fold out of the review queue."""

from faceq.settings import TrustThresholds
from faceq.outputs.summary import drift_alerts, source_stats
from faceq.outputs.review_queue import folded_into_alert, source_of

T = TrustThresholds()


def _row(item_id, quality, reasons=(), device=None, status="ok"):
    row = {"item_id": item_id, "quality": quality, "status": status, "needs_review": bool(reasons),
           "review_reasons": list(reasons)}
    if device:
        row["device_id"] = device
    return row


def test_the_source_is_the_device_or_the_top_level_folder():
    assert source_of(_row("x.jpg", 0.9, device="gate-3")) == "gate-3"
    assert source_of(_row("cam7/2026/x.jpg", 0.9)) == "cam7"
    assert source_of(_row("x.jpg", 0.9)) == "(top level)"


def test_a_night_ir_camera_is_one_alert_not_hundreds_of_review_lines():
    rows = [_row(f"day/{i}.jpg", 0.8) for i in range(5)]
    rows += [_row(f"night/{i}.jpg", 0.23, ["low_quality"]) for i in range(300)]
    rows += [_row("night/cat.jpg", 0.15, ["low_quality", "likely_not_a_face"]),
             _row("night/broken.jpg", None, ["error"], status="error"),
             _row("night/two.jpg", 0.3, ["multiple_faces", "low_quality"])]
    stats = source_stats(rows)
    assert stats["night"]["median_quality"] == 0.23 and stats["day"]["median_quality"] == 0.8
    alerts = drift_alerts(stats, None, T)
    assert [(a["source"], a["kind"]) for a in alerts] == [("night", "low_median_quality")]
    assert "check the camera" in alerts[0]["message"]
    folded = [r["item_id"] for r in rows if folded_into_alert(r, {"night"})]
    assert len(folded) == 301  # the low-quality photos and the cat; the broken and two-face ones stay listed
    assert "night/broken.jpg" not in folded and "night/two.jpg" not in folded


def test_a_marked_drop_against_the_last_job_is_named():
    baseline = {"job_id": "monday", "sources": {"gate-1": {"median_quality": 0.82},
                                                "gate-2": {"median_quality": 0.80}}}
    stats = {"gate-1": {"median_quality": 0.66, "n_ok": 40}, "gate-2": {"median_quality": 0.70, "n_ok": 40},
             "gate-9": {"median_quality": 0.50, "n_ok": 3}}
    alerts = drift_alerts(stats, baseline, T)
    assert [(a["source"], a["kind"], a["baseline_job"]) for a in alerts] == [("gate-1", "quality_drop", "monday")]
    assert alerts[0]["baseline_median_quality"] == 0.82
    assert drift_alerts(stats, None, T) == []
