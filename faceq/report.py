"""``jobs/<id>/report.html``: one self-contained page a person can read (no external assets).

Counts by status, decision and reason; the quality histogram (PNG, embedded); sources with
their alerts; enrolment problems; the first flagged items with thumbnails where the source
can be read. Items explained by a camera alert are counted under the alert, not listed.
"""

from __future__ import annotations

import base64
import html
import io

from faceq.storage import Storage

THUMBNAIL_PX = 96

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d232a;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde3ea}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #dde3ea;padding:4px 8px;text-align:left}
th{background:#f3f6f9} .muted{color:#66707a} .alert{background:#fff1f0;border-left:4px solid #d4380d;padding:8px 12px;
margin:6px 0} .warn{background:#fffbe6;border-left:4px solid #d48806;padding:8px 12px} img.thumb{width:72px;height:72px;
object-fit:cover;border-radius:4px} .grid{display:flex;gap:32px;flex-wrap:wrap} code{background:#f3f6f9;padding:0 3px}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _counts(title: str, counts: dict) -> str:
    if not counts:
        return ""
    return f"<div><h3>{_e(title)}</h3>" + _table(["", "count"], [[_e(k), v] for k, v in counts.items()]) + "</div>"


def histogram_png(histogram: dict, review_quality: float, match_quality: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    edges, counts = histogram["edges"], histogram["counts"]
    figure, axes = plt.subplots(figsize=(6, 2.6), dpi=100)
    axes.bar(edges[:-1], counts, width=0.095, align="edge", color="#3b7dd8")
    axes.axvline(review_quality, color="#d4380d", linestyle="--", linewidth=1, label=f"review < {review_quality}")
    axes.axvline(match_quality, color="#389e0d", linestyle="--", linewidth=1, label=f"confident ≥ {match_quality}")
    axes.set_xlabel("quality (exp(logvar); ≥ 1 counted in the last bin)")
    axes.set_ylabel("faces")
    axes.legend(fontsize=8, frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def warm_up() -> None:
    """Import matplotlib and build its font cache now (0.7 s) rather than in the first job."""
    histogram_png({"edges": [0.0, 0.5, 1.0], "counts": [1, 1]}, 0.4, 0.6)


def thumbnail(storage: Storage, uri: str) -> str | None:
    """A small JPEG of the photo as base64, or None when it cannot be read or decoded."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(storage.read_uri(uri))) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((THUMBNAIL_PX * 2, THUMBNAIL_PX * 2))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=80)
            return base64.b64encode(buffer.getvalue()).decode()
    except Exception:  # unreadable, not an image, a bomb: the row already says why
        return None


def render_report(summary: dict, flagged: list[dict], storage: Storage, verification: bool) -> str:
    """The page for ``summary``; ``flagged``: the first flagged rows that no camera alert explains
    (the page stays small whatever the job size; review.csv lists every flagged row)."""
    from faceq.summary import source_of

    counts = summary["counts"]
    thresholds = summary["thresholds"]
    alerted = {a["source"] for a in summary["alerts"]}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>faceq {_e(summary['job_id'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>faceq {_e(summary['kind'])} job <code>{_e(summary['job_id'])}</code></h1>",
             f"<p class='muted'>{summary['n_items']} items → {summary['n_rows']} rows · mode {_e(summary['mode'])} · "
             f"source {_e(summary['source'])}" + (f" · gallery {_e(summary['gallery'])}" if summary.get('gallery')
                                                  and isinstance(summary['gallery'], str) else "") +
             f" · model {_e(', '.join(summary['model_ids']))} · {summary['timings']['items_per_second']} items/s</p>"]
    if any("-random-" in m for m in summary["model_ids"]):
        parts.append("<p class='warn'><b>Random weights.</b> FACEQ_MODEL_WEIGHTS was not set: embeddings, quality "
                     "and decisions below are placeholders, not face recognition.</p>")
    for alert in summary["alerts"]:
        parts.append(f"<div class='alert'><b>Camera alert</b> — {_e(alert['message'])}</div>")
    parts.append("<h2>Counts</h2><div class='grid'>" + _counts("Status", counts["status"]) +
                 _counts("Decision", counts.get("decision", {})) + _counts("Review reasons", counts["review_reasons"])
                 + "</div>")
    parts.append(f"<p>{counts['needs_review']} items need review"
                 + (f", of which {counts['folded_into_source_alerts']} are explained by the camera alerts above"
                    if counts["folded_into_source_alerts"] else "") + ".</p>")
    parts.append("<h2>Quality</h2><img alt='quality histogram' src='data:image/png;base64,"
                 f"{histogram_png(summary['quality']['histogram'], thresholds['review_quality'], thresholds['match_quality'])}'>")
    parts.append("<h2>Sources</h2>" + _table(
        ["source", "rows", "ok", "flagged", "median quality", "alert"],
        [[_e(s), v["n_rows"], v["n_ok"], v["n_flagged"], _e(v["median_quality"]), "⚠" if s in alerted else ""]
         for s, v in summary["sources"].items()]))
    gallery = summary.get("gallery")
    if isinstance(gallery, dict):
        parts.append(f"<h2>Enrolment: gallery {_e(gallery['name'])} v{gallery['version']}</h2>"
                     f"<p>{gallery['enrolled']} employees enrolled (enrolment quality ≥ {gallery['enrol_quality']}).</p>")
        if gallery["employees_without_usable_image"]:
            parts.append("<p class='alert'>No usable enrolment image: "
                         + _e(", ".join(gallery["employees_without_usable_image"])) + "</p>")
        if gallery["rejected_images"]:
            parts.append("<h3>Rejected images</h3>" + _table(["employee", "image", "reason"], [
                [_e(r["employee_id"]), _e(r["item_id"]), _e(r["reason"])] for r in gallery["rejected_images"]]))
        if gallery["likely_duplicates"]:
            parts.append("<h3>Likely duplicate identities</h3>" + _table(["employee", "employee", "similarity"], [
                [_e(d["employee_a"]), _e(d["employee_b"]), d["similarity"]] for d in gallery["likely_duplicates"]]))
    n_listed = counts["needs_review"] - counts["folded_into_source_alerts"]
    header = ["photo", "item", "status", "quality", "reasons", "source"] + \
        (["decision", "similarity", "looks most like"] if verification else []) + ["error"]
    table_rows = []
    for row in flagged:
        thumb = thumbnail(storage, row["source_uri"]) if row["status"] != "error" else None
        image = f"<img class='thumb' src='data:image/jpeg;base64,{thumb}'>" if thumb else "<span class='muted'>—</span>"
        quality = "" if row["quality"] is None else f"{row['quality']:.3f}"
        cells = [image, _e(row["item_id"]), _e(row["status"]), quality, _e(", ".join(row["review_reasons"])),
                 _e(source_of(row))]
        if verification:
            similarity = "" if row["similarity"] is None else f"{row['similarity']:.3f}"
            cells += [_e(row["decision"]), similarity, _e(row["best_candidate_id"])]
        table_rows.append(cells + [_e(row["error"])])
    parts.append(f"<h2>Review queue</h2><p class='muted'>First {len(flagged)} of {n_listed} "
                 "flagged items (all of them are in review.csv).</p>" + _table(header, table_rows))
    parts.append("</body></html>")
    return "".join(parts)
