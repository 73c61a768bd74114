"""``jobs/<id>/report.html``: one self-contained page a person can read (no external assets).

Counts by status, decision and reason; the quality histogram (PNG, embedded); sources with
their alerts; enrolment problems and gallery changes; and the review queue people act on:
flagged items in sections by what to do (most urgent first; the first rows of each, every
count), grouped again by camera alert and by claimed employee. Each item shows the check-in
photo with its face box and landmarks (linked to the full image), the claimed employee, the
capture time and device, the claimed employee's enrolment photos, the closest enrolled
candidates with their photos and scores, the reason in plain words with the recommended
action, and prior verdicts on the same employee. Items explained by a camera alert are
counted under the alert, not listed one by one. The page has no scripts.

Every page written here carries a Content-Security-Policy (``PAGE_CSP``) in a ``<meta>``: the
escaping is the first wall, the policy the second. Opened from disk or a share, a page whose
escaping ever slipped still runs no script, loads nothing from anywhere (photos are embedded
as data: URIs) and posts no form.
"""

from __future__ import annotations

import base64
import html
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from faceq.outputs.placeholder import ITEM_NOTE, is_placeholder, warning_for
from faceq.outputs.wording import code_label, plural
from faceq.storage.store import Storage
from faceq.when import time_html

THUMBNAIL_PX = 96  # reference and candidate photos (CSS px)
CHECKIN_PX = 160  # the check-in photo (CSS px; stored at 1.5× for sharper screens)
CANDIDATE_PHOTOS = 3  # candidates shown with a photo (the rest of the top-k as text)
REFERENCE_PHOTOS = 2  # enrolment photos per employee
EMPLOYEE_ROWS = 50  # employees listed in "By employee"
MAX_PHOTO_BYTES = 32 << 20
PHOTO_THREADS = 8
MANIFEST_FIELDS_SHOWN = 20  # extra manifest columns shown per item (review.csv has them all)
MANIFEST_VALUE_CHARS = 300

PAGE_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
            "form-action 'none'")

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#1d232a;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde3ea}
h3{font-size:15px;margin:18px 0 4px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #dde3ea;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f6f9} .muted{color:#66707a} .alert{background:#fff1f0;border-left:4px solid #d4380d;padding:8px 12px;
margin:6px 0} .warn{background:#fffbe6;border-left:4px solid #d48806;padding:8px 12px} img.thumb{max-width:96px;
max-height:96px;border-radius:4px} .grid{display:flex;gap:32px;flex-wrap:wrap} code{background:#f3f6f9;padding:0 3px}
article.item{border:1px solid #dde3ea;border-radius:6px;padding:10px 12px;margin:10px 0;display:grid;
grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:12px}
.photos{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-start} figure{margin:0;text-align:center}
figcaption{font-size:12px;color:#66707a;max-width:170px;overflow-wrap:anywhere}
img.checkin-photo{max-width:160px;max-height:160px;border-radius:4px;border:1px solid #c9d1d9}
img.reference-photo,img.candidate-photo{max-width:96px;max-height:96px;border-radius:4px;border:1px solid #c9d1d9}
ol.top-k{list-style:none;padding:0;margin:0;display:flex;gap:10px;flex-wrap:wrap} li.candidate{text-align:center;
font-size:12px} .candidates h4,.references h4{margin:0 0 4px;font-size:12px;color:#66707a;font-weight:600}
dl.facts{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0} dt{color:#66707a} dd{margin:0;
overflow-wrap:anywhere} .reason{margin:6px 0} .action{margin:6px 0;background:#f0f7ff;border-left:4px solid #3b7dd8;
padding:4px 8px} .prior-verdicts,.verdict{font-size:13px;margin:4px 0} .verdict{background:#f6ffed;
border-left:4px solid #389e0d;padding:4px 8px} .nophoto{display:inline-block;width:96px;height:96px;line-height:96px;
background:#f3f6f9;color:#66707a;font-size:12px;border-radius:4px} .badge{display:inline-block;background:#f3f6f9;
border-radius:10px;padding:0 8px;font-size:12px} .item .wide{grid-column:1/-1}
"""


def page_head(title: str) -> str:
    """``<!doctype html>`` up to ``<body>``: charset, the CSP (before anything it governs), title, style."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='Content-Security-Policy' "
            f"content=\"{PAGE_CSP}\"><title>{_e(title)}</title><style>{_CSS}</style></head><body>")


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _counts(title: str, counts: dict, decides: str | None = None) -> str:
    """A count table in a reviewer's words; each code is kept in its cell's title (scripts)."""
    if not counts:
        return ""
    return f"<div><h3>{_e(title)}</h3>" + _table(["", "count"], [[code_label(k, decides), v] for k, v in counts.items()]) + "</div>"


def histogram_png(histogram: dict, review_quality: float, match_quality: float) -> str | None:
    """The quality histogram as base64 PNG; None where matplotlib is not installed (the light
    client regenerating a report: the page then says where to get the plot)."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    edges, counts = histogram["edges"], histogram["counts"]
    figure, axes = plt.subplots(figsize=(6, 2.6), dpi=100)
    axes.bar(edges[:-1], counts, width=0.095, align="edge", color="#3b7dd8")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # faces are counted: no 0.5 face
    axes.set_ylim(bottom=0)
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


def _quality_chart(histogram: dict, thresholds: dict) -> str:
    """The histogram, or a line saying why there is none (no photo had a usable face)."""
    if not sum(histogram.get("counts") or []):
        return "<p class='muted no-quality'>No face was scored: there is no quality to plot.</p>"
    png = histogram_png(histogram, thresholds["review_quality"], thresholds["match_quality"])
    if png is None:
        return ("<p class='muted'>The histogram is drawn where matplotlib is installed "
                "(<code>pip install 'faceq[worker]'</code>); the report the workers wrote has it.</p>")
    return f"<img alt='quality histogram' src='data:image/png;base64,{png}'>"


def warm_up() -> None:
    """Import matplotlib and build its font cache now (0.7 s) rather than in the first job."""
    histogram_png({"edges": [0.0, 0.5, 1.0], "counts": [1, 1]}, 0.4, 0.6)



# -- photos -----------------------------------------------------------------------------------

PhotoKey = tuple  # (uri, css px, bbox or None, landmarks or None)


def photo(storage: Storage, uri: str, size: int, box=None, landmarks=None, scale: float = 1.5) -> str | None:
    """The photo fitted into ``size`` CSS px (stored at ``scale`` ×, aspect kept, never cropped)
    as base64 JPEG, with the face ``box`` and ``landmarks`` (coordinates in the decoded image,
    EXIF orientation applied, as in the results) drawn; None when it cannot be read or decoded."""
    from PIL import Image, ImageDraw, ImageOps

    try:
        with Image.open(io.BytesIO(storage.read_uri(uri, max_bytes=MAX_PHOTO_BYTES))) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # the orientation swaps the sides
                width, height = height, width
            side = int(size * scale)
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced scale, much faster
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((side, side))
            factor = image.width / width
            draw = ImageDraw.Draw(image)
            line = max(2, round(image.width / 80))
            if box is not None and not _whole_image(box, width, height):
                x1, y1, x2, y2 = (float(v) * factor for v in box)
                draw.rectangle((x1, y1, x2, y2), outline=(255, 64, 0), width=line)
            if landmarks is not None:
                r = max(2, line)
                colours = [(0, 200, 255), (0, 200, 255), (255, 220, 0), (255, 0, 200), (255, 0, 200)]
                for k in range(0, len(landmarks) - 1, 2):
                    x, y = float(landmarks[k]) * factor, float(landmarks[k + 1]) * factor
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=colours[(k // 2) % len(colours)])
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=78)
            return base64.b64encode(buffer.getvalue()).decode()
    except Exception:  # unreadable, gone, not an image, a bomb: the row already says why
        return None


def _whole_image(box, width: int, height: int) -> bool:
    """Crop mode's box is the whole image: drawing it would only frame the picture."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1 <= 1 and y1 <= 1 and x2 >= width - 1 and y2 >= height - 1


def thumbnail(storage: Storage, uri: str) -> str | None:
    """A small JPEG of the photo as base64, or None when it cannot be read or decoded."""
    return photo(storage, uri, THUMBNAIL_PX)


def fetch_photos(storage: Storage, keys: set[PhotoKey]) -> dict[PhotoKey, str | None]:
    """Every photo the page needs, read concurrently (storage latency, not CPU, dominates)."""
    keys = sorted(keys, key=repr)
    if not keys:
        return {}
    with ThreadPoolExecutor(min(PHOTO_THREADS, len(keys)), thread_name_prefix="faceq-photos") as pool:
        found = pool.map(lambda k: photo(storage, k[0], k[1], k[2], k[3]), keys)
        return dict(zip(keys, found))


def _box(row: dict, name: str):
    value = row.get(name)
    return tuple(value) if value is not None else None


def checkin_key(row: dict, suffix: str = "") -> PhotoKey | None:
    """The photo shown for a row (``suffix="_b"``: a compare pair's second photo), boxed; none for
    an unreadable one (a pair's error names the photo: ``image_a: …`` / ``image_b: …``)."""
    uri = row.get("source_uri" + suffix)
    if not uri:
        return None
    if row.get("status") == "error" and (
            not row.get("source_uri_b") or f"image_{'b' if suffix else 'a'}:" in (row.get("error") or "")):
        return None
    return (uri, CHECKIN_PX, _box(row, "bbox" + suffix), _box(row, "landmarks" + suffix))


def reference_key(uri: str) -> PhotoKey:
    return (uri, THUMBNAIL_PX, None, None)


def full_image_link(row: dict) -> str | None:
    """Where the full photo opens: the storage URI when a browser can open it (file://, http)."""
    uri = row.get("source_uri") or ""
    return uri if uri.startswith(("file://", "http://", "https://")) else None


# -- the page ---------------------------------------------------------------------------------


def _a(value) -> str:
    """An attribute value (quotes escaped too)."""
    return html.escape("" if value is None else str(value), quote=True)


def _img(b64: str | None, css: str, alt: str) -> str:
    if not b64:
        return f"<span class='nophoto {css}-missing'>no photo</span>"
    return f"<img class='{css}' alt='{_a(alt)}' src='data:image/jpeg;base64,{b64}'>"


def _score(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def _captured(row: dict) -> str:
    value = row.get("captured_at_raw") or row.get("captured_at")
    return value.isoformat() if hasattr(value, "isoformat") else ("" if value is None else str(value))


def manifest_fields(row: dict) -> list[tuple[str, str]]:
    """The manifest's own columns (``extra``: an ``hr_case`` …), as (name, value), a bounded few."""
    extra = row.get("extra") or []
    pairs = extra.items() if isinstance(extra, dict) else extra
    return [(str(name), "" if value is None else str(value)[:MANIFEST_VALUE_CHARS])
            for name, value in list(pairs)[:MANIFEST_FIELDS_SHOWN]]


def _candidates(row: dict) -> list[tuple[str, float | None]]:
    if row.get("top_k_ids"):
        scores = row.get("top_k_scores") or []
        return [(c, scores[i] if i < len(scores) else None) for i, c in enumerate(row["top_k_ids"])]
    if row.get("best_candidate_id"):
        return [(row["best_candidate_id"], row.get("best_candidate_score"))]
    return []


def _gallery_ref(summary: dict) -> tuple[str, int] | None:
    gallery = summary.get("gallery")
    if isinstance(gallery, str) and "@v" in gallery:
        name, version = gallery.rsplit("@v", 1)
        if version.isdigit():
            return name, int(version)
    return None


class ReviewContext:
    """Gallery photos and verdicts for the rows a page lists, read once per page."""

    def __init__(self, storage: Storage, summary: dict, rows: list[dict], employees: list[str]):
        from faceq.gallery import GalleryStore
        from faceq.outputs.verdicts import job_verdicts_key, latest_per_item, prior_verdicts, read

        self.gallery = _gallery_ref(summary)
        self.gallery_info: dict = {}
        self.photos: dict[str, list[dict]] = {}
        wanted = set(employees)
        for row in rows:
            wanted.add(row.get("employee_id"))
            wanted.update(c for c, _ in _candidates(row)[:CANDIDATE_PHOTOS])
        wanted.discard(None)
        self.prior: dict[str, list[dict]] = {}
        if self.gallery:
            store = GalleryStore(storage)
            try:
                self.gallery_info = store.info(*self.gallery)
                self.photos = store.enrolment_photos(*self.gallery, wanted, per_employee=REFERENCE_PHOTOS)
            except Exception:  # a gallery deleted since: the page still renders, without photos
                self.gallery_info = {}
            self.prior = prior_verdicts(storage, self.gallery[0], wanted, exclude_job=summary["job_id"])
        self.verdicts = latest_per_item(read(storage, job_verdicts_key(summary["job_id"])))
        self.members_recorded = not self.gallery or storage.exists(
            f"galleries/{self.gallery[0]}/v{self.gallery[1]}/members.parquet")

    def photo_keys(self, rows: list[dict]) -> set[PhotoKey]:
        keys = set()
        for row in rows:
            keys.update(key for key in (checkin_key(row), checkin_key(row, "_b")) if key is not None)
        for members in self.photos.values():
            keys.update(reference_key(m["source_uri"]) for m in members if m.get("source_uri"))
        return keys


def _reference_photos(context: ReviewContext, images: dict, employee: str, css: str) -> str:
    members = context.photos.get(employee) or []
    if not members:
        return _img(None, css, "")
    return "".join(_img(images.get(reference_key(m["source_uri"])), css, f"enrolment photo of {employee}")
                   for m in members if m.get("source_uri"))


def _item(row: dict, index: int, summary: dict, context: ReviewContext, images: dict, decides: str | None,
          photo_link: Callable[[dict], str | None], row_extra: Callable[[dict, str], str] | None) -> str:
    from faceq.outputs.guidance import explain, section_of
    from faceq.outputs.review_queue import source_of
    from faceq.outputs.verdicts import describe

    verification = decides == "attendance"
    section = section_of(row, decides)
    reason, action = explain(row, decides, summary.get("thresholds"))
    key = checkin_key(row)
    checkin = _img(images.get(key) if key else None, "checkin-photo", f"check-in photo {row['item_id']}")
    link = photo_link(row)
    if link and key and images.get(key):
        checkin = f"<a class='full-image' href='{_a(link)}' target='_blank' rel='noopener'>{checkin}</a>"
    face = f"face {(row.get('face_index') or 0) + 1} of {row.get('face_count')}" \
        if (row.get("face_count") or 0) > 1 else "check-in photo" if verification else "photo"
    if decides == "compare":
        face = "photo A" + (f" ({row.get('face_count')} faces)" if (row.get("face_count") or 0) > 1 else "")
    # a compare pair names both photos (its item id is the pair's); elsewhere the link is the path
    parts = [f"<figure class='checkin'>{checkin}<figcaption>{_e(face)}"
             + ("" if link and decides != "compare" else
                f"<br><span class='source-uri'>{_e(row.get('source_uri'))}</span>")
             + "</figcaption></figure>"]
    if decides == "compare":
        parts.append(_second_photo(row, images))
    employee = row.get("employee_id")
    if verification:
        enrolled = context.photos.get(employee)
        parts.append(f"<figure class='reference' data-employee-id='{_a(employee)}'>"
                     f"{_reference_photos(context, images, employee, 'reference-photo')}<figcaption>enrolled as "
                     f"<b>{_e(employee)}</b>" + ("" if enrolled else
                                                 " — not in the gallery" if section == "not_enrolled" else
                                                 " — no enrolment photo recorded") + "</figcaption></figure>")
        candidates = _candidates(row)
        if candidates:
            items = []
            for rank, (candidate, score) in enumerate(candidates):
                photo_html = _reference_photos(context, images, candidate, "candidate-photo") \
                    if rank < CANDIDATE_PHOTOS else ""
                items.append(f"<li class='candidate' data-employee-id='{_a(candidate)}' data-score='{_a(score)}'>"
                             f"{photo_html}<br><span class='candidate-id'>{_e(candidate)}</span> "
                             f"<span class='candidate-score'>{'' if score is None else f'{score:.3f}'}</span></li>")
            parts.append("<div class='candidates'><h4>Closest enrolled employees (score = similarity × enrolment "
                         "quality)</h4><ol class='top-k'>" + "".join(items) + "</ol></div>")
        else:
            parts.append("<div class='candidates'><h4>Closest enrolled employees</h4><p class='muted no-candidates'>"
                         "none: there is no usable face to compare</p></div>")
    facts = []  # (label, css class, value as HTML)
    if verification or employee:
        facts += [("Claimed employee" if verification else "Employee", "claimed-employee", _e(employee))]
    if verification or _captured(row):
        facts += [("Captured", "captured-at", time_html(_captured(row)))]
    if decides != "compare":  # a pair's photos are named under them: a "source" folder says nothing
        facts += [("Device" if row.get("device_id") else "Source", "device", _e(source_of(row)))]
    facts += [("Record" if verification else "Pair" if decides == "compare" else "Photo", "item-id",
               _e(row["item_id"]))]
    facts += [(name, "manifest-field", _e(value)) for name, value in manifest_fields(row)]
    numbers = [f"quality {row['quality']:.3f}"] if row.get("quality") is not None else []
    if decides == "compare":
        numbers = [f"quality A {_score(row.get('quality'))}", f"quality B {_score(row.get('quality_b'))}"]
    if decides:
        numbers = ([f"similarity {row['similarity']:.3f}"] if row.get("similarity") is not None else []) + numbers
    result = [_e(n) for n in numbers]
    if decides:  # the decision in words, its code in the title
        result.insert(0, code_label(str(row.get("decision")), decides))
    facts += [("Result", "result", " · ".join(result) or _e(row.get("status")))]
    if row.get("error"):
        facts += [("Error", "error", _e(row["error"]))]
    details = "<dl class='facts'>" + "".join(f"<dt>{_e(label)}</dt><dd class='{css}'>{value}</dd>"
                                             for label, css, value in facts) + "</dl>"
    if is_placeholder(row.get("model_id")):
        details += f"<p class='warn placeholder-item'>{_e(ITEM_NOTE)}</p>"
    details += f"<p class='reason'>{_e(reason)}</p><p class='action'><b>What to do:</b> {_e(action)}</p>"
    prior = context.prior.get(employee) if employee else None
    if prior:
        details += ("<p class='prior-verdicts'><b>Earlier verdicts on " + _e(employee) + ":</b> "
                    + "; ".join(_e(describe(v)) for v in prior) + "</p>")
    verdict = context.verdicts.get(row["item_id"])
    if verdict:
        details += f"<p class='verdict'><b>Verdict:</b> {_e(describe(verdict))}</p>"
    if row_extra:
        details += row_extra(row, f"item-{index}")
    return (f"<article class='item' id='item-{index}' data-item-id='{_a(row['item_id'])}' "
            f"data-section='{_a(section)}'><div class='photos'>{''.join(parts)}</div><div>{details}</div></article>")


def _second_photo(row: dict, images: dict) -> str:
    """A compare pair's photo B, boxed, with its face count and URI."""
    key = checkin_key(row, "_b")
    faces = f" ({row.get('face_count_b')} faces)" if (row.get("face_count_b") or 0) > 1 else ""
    return (f"<figure class='checkin second-photo'>{_img(images.get(key) if key else None, 'checkin-photo', 'photo B')}"
            f"<figcaption>photo B{_e(faces)}<br><span class='source-uri'>{_e(row.get('source_uri_b'))}</span>"
            "</figcaption></figure>")


def _as_queue(flagged, decides: str | None):
    from faceq.outputs.review_queue import ReviewQueue

    if isinstance(flagged, ReviewQueue):
        return flagged
    queue = ReviewQueue(decides, section_rows=len(flagged) or 1, total_rows=len(flagged) or 1)
    for row in flagged:
        queue.add(row, folded=False)
    return queue


def render_review_queue(summary: dict, flagged, storage: Storage, decides: str | None, *,
                        photo_link: Callable[[dict], str | None] = full_image_link,
                        row_extra: Callable[[dict, str], str] | None = None,
                        section_note: Callable[[str, int, int], str] | None = None,
                        intro: str | None = None) -> str:
    """The review queue's HTML: contents, camera alerts, employees, then the sections
    (``intro`` replaces the paragraphs under the heading)."""
    from faceq.outputs.guidance import guidance_for
    from faceq.outputs.verdicts import describe

    queue = _as_queue(flagged, decides)
    sections = queue.sections()
    rows = list(queue)
    top_employees = sorted(queue.employees.items(), key=lambda e: (-sum(e[1].values()), e[0]))[:EMPLOYEE_ROWS]
    context = ReviewContext(storage, summary, rows, [e for e, _ in top_employees])
    alert_rows = [r for samples in queue.alert_samples.values() for r in samples]
    keys = context.photo_keys(rows) | {(r["source_uri"], THUMBNAIL_PX, None, None) for r in alert_rows
                                       if r.get("status") != "error"}
    images = fetch_photos(storage, keys)
    counts = summary["counts"]
    n_listed = counts["needs_review"] - counts["folded_into_source_alerts"]
    parts = [f"<h2 id='review-queue'>Review queue</h2>{intro}" if intro is not None else
             f"<h2 id='review-queue'>Review queue</h2><p>{plural(n_listed, 'item')} to review"
             + (f", and {counts['folded_into_source_alerts']} explained by camera alerts (below)"
                if counts["folded_into_source_alerts"] else "") +
             f". Sections go from most to least urgent; each lists its first {plural(queue.section_rows, 'item')} "
             f"({queue.total_rows} at most on this page) — <b>review.csv</b> has every one with the same "
             "columns.</p><p class='muted'>Record a verdict with <code>faceq verdict "
             f"{_e(summary['job_id'])} ITEM_ID confirmed|rejected|retake --note \"…\"</code>, or review in the "
             f"browser with <code>faceq review {_e(summary['job_id'])}</code>.</p>"]
    if not context.members_recorded:
        parts.append("<p class='warn'>This gallery version records no enrolment photos (enrolled before faceq "
                     "kept them): enrol again to see them here.</p>")
    if sections:
        toc = [[f"<a href='#s-{_a(s)}'>{_e(guidance_for(s, decides).title)}</a>", n, len(listed),
                _e(guidance_for(s, decides).short_action)] for s, n, listed in sections]
        parts.append("<nav class='toc'>" + _table(["section", "items", "listed here", "action"], toc) + "</nav>")
    if queue.alert_counts:
        parts.append("<h3 id='by-camera-alert'>By camera alert</h3>")
        alerts = {a["source"]: a for a in summary["alerts"]}
        for source, n in queue.alert_counts.most_common():
            samples = "".join(
                f"<figure>{_img(images.get((r['source_uri'], THUMBNAIL_PX, None, None)), 'thumb', r['item_id'])}"
                f"<figcaption>{_e(r['item_id'])}</figcaption></figure>" for r in queue.alert_samples.get(source, []))
            message = alerts.get(source, {}).get("message", source)
            parts.append(f"<div class='alert camera-alert' data-source='{_a(source)}'><b>{_e(source)}</b>: "
                         f"{plural(n, 'flagged photo')} folded under this alert — {_e(message)}"
                         f"<div class='photos'>{samples}</div></div>")
    if top_employees:
        anchors: dict[str, int] = {}
        for i, row in enumerate(rows):
            anchors.setdefault(row.get("employee_id"), i)
        table = []
        for employee, by_section in top_employees:
            first = anchors.get(employee)
            name = f"<a href='#item-{first}'>{_e(employee)}</a>" if first is not None else _e(employee)
            table.append([name, sum(by_section.values()),
                          _e(", ".join(f"{guidance_for(s).title.lower()} {n}" for s, n in by_section.most_common())),
                          _e("; ".join(describe(v) for v in context.prior.get(employee, [])))])
        more = len(queue.employees) - len(top_employees)
        parts.append("<h3 id='by-employee'>By employee</h3>" + _table(
            ["claimed employee", "flags", "by section", "earlier verdicts"], table)
            + (f"<p class='muted'>{plural(more, 'more employee')} with fewer flags: see review.csv.</p>" if more > 0 else ""))
    index = 0
    for section, n, listed in sections:
        guide = guidance_for(section, decides)
        note = section_note(section, n, len(listed)) if section_note else (
            f"first {len(listed)} of {n} (all of them are in review.csv)" if n > len(listed) else plural(n, "item"))
        parts.append(f"<section class='queue' id='s-{_a(section)}' data-count='{n}'><h3>{_e(guide.title)} "
                     f"<span class='badge'>{n}</span></h3><p class='muted'>{note}</p>")
        for row in listed:
            parts.append(_item(row, index, summary, context, images, decides, photo_link, row_extra))
            index += 1
        parts.append("</section>")
    return "".join(parts)


def _gallery_section(gallery: dict) -> list[str]:
    parts = [f"<h2>Enrolment: gallery {_e(gallery['name'])} v{gallery['version']}</h2>"
             f"<p>{gallery['enrolled']} employees enrolled (enrolment quality ≥ {gallery['enrol_quality']}"
             + (f", {_e(gallery['mode'])} mode" if gallery.get("mode") else "") + ").</p>"]
    changes = gallery.get("changes")
    if gallery.get("kind") in ("delta", "remove") and isinstance(changes, dict):
        rows = [[_e(what), len(changes.get(what) or []), _e(", ".join((changes.get(what) or [])[:200]))]
                for what in ("added", "updated", "removed", "kept_previous") if changes.get(what)]
        parts.append(f"<p>Changes against v{gallery.get('base_version')} ({changes.get('unchanged', 0)} employees "
                     "unchanged):</p>" + _table(["change", "employees", "who"], rows))
    if gallery["employees_without_usable_image"]:
        parts.append("<p class='alert'>No usable enrolment image: "
                     + _e(", ".join(gallery["employees_without_usable_image"])) + "</p>")
    if gallery["rejected_images"]:
        parts.append("<h3>Rejected images</h3>" + _table(["employee", "image", "reason"], [
            [_e(r["employee_id"]), _e(r["item_id"]), _e(r["reason"])] for r in gallery["rejected_images"]]))
    if gallery["likely_duplicates"]:
        parts.append("<h3>Likely duplicate identities</h3>" + _table(["employee", "employee", "similarity"], [
            [_e(d["employee_a"]), _e(d["employee_b"]), d["similarity"]] for d in gallery["likely_duplicates"]]))
    return parts


def placeholder_banner(summary: dict) -> str:
    """The banner of a job a placeholder model made (random weights, the stand-in); empty otherwise."""
    warning = warning_for(summary.get("model_ids") or [])
    return f"<p class='warn placeholder-banner'><b>Not real results.</b> {_e(warning)}</p>" if warning else ""


def _rate(timings: dict) -> str:
    """Items/s, with what it was timed over on hover (a resumed job: not its pause)."""
    running = timings.get("running_seconds")
    if running is None:
        return f"{timings['items_per_second']} items/s"
    over = f"timed over the {running:g} s its chunks ran; {timings.get('wall_seconds', 0):g} s since it was submitted"
    return f"<span title='{_e(over)}'>{timings['items_per_second']} items/s</span>"


def render_report(summary: dict, flagged, storage: Storage, decides: str | None, *,
                  photo_link: Callable[[dict], str | None] = full_image_link,
                  row_extra: Callable[[dict, str], str] | None = None,
                  section_note: Callable[[str, int, int], str] | None = None) -> str:
    """The page for ``summary``; ``flagged``: the bounded review queue ``write_review`` returns
    (or a list of flagged rows no camera alert explains). The page stays small whatever the job
    size; review.csv lists every flagged row."""
    counts = summary["counts"]
    thresholds = summary["thresholds"]
    parts = [page_head(f"faceq {summary['job_id']}"),
             f"<h1>faceq {_e(summary['kind'])} job <code>{_e(summary['job_id'])}</code></h1>",
             f"<p class='muted'>{plural(summary['n_items'], 'pair' if decides == 'compare' else 'item')} → "
             f"{plural(summary['n_rows'], 'row')} · mode {_e(summary['mode'])} · "
             f"source {_e(summary['source'])}" + (f" · gallery {_e(summary['gallery'])}" if summary.get('gallery')
                                                  and isinstance(summary['gallery'], str) else "") +
             f" · model {_e(', '.join(summary['model_ids']))} · {_rate(summary['timings'])}</p>"]
    parts.append(placeholder_banner(summary))
    for warning in summary.get("warnings") or []:
        parts.append(f"<div class='alert job-warning'><b>Warning</b> — {_e(warning)}</div>")
    for alert in summary["alerts"]:
        parts.append(f"<div class='alert'><b>Camera alert</b> — {_e(alert['message'])}</div>")
    parts.append("<h2>Counts</h2><div class='grid'>" + _counts("Status", counts["status"], decides) +
                 _counts("Decision", counts.get("decision", {}), decides)
                 + _counts("Review reasons", counts["review_reasons"], decides)
                 + "</div>")
    need = counts["needs_review"]
    parts.append(f"<p>{plural(need, 'item')} {'needs' if need == 1 else 'need'} review"
                 + (f", of which {counts['folded_into_source_alerts']} are explained by the camera alerts above"
                    if counts["folded_into_source_alerts"] else "") + ". <a href='#review-queue'>Review queue</a></p>")
    parts.append("<h2>Quality</h2>" + _quality_chart(summary["quality"]["histogram"], thresholds))
    alerted = {a["source"] for a in summary["alerts"]}
    parts.append("<h2>Sources</h2>" + _table(
        ["source", "rows", "ok", "flagged", "median quality", "alert"],
        [[_e(s), v["n_rows"], v["n_ok"], v["n_flagged"], _e(v["median_quality"]), "⚠" if s in alerted else ""]
         for s, v in summary["sources"].items()]))
    gallery = summary.get("gallery")
    if isinstance(gallery, dict):
        parts += _gallery_section(gallery)
    parts.append(render_review_queue(summary, flagged, storage, decides, photo_link=photo_link,
                                     row_extra=row_extra, section_note=section_note))
    parts.append("</body></html>")
    return "".join(parts)


def enrolment_photos_page(storage: Storage, gallery: str, employee_id: str, members: list[dict],
                          version: dict | None = None, current: int | None = None) -> str:
    """A small page with one employee's enrolment photos (``faceq gallery photos --out``).
    ``version``: the gallery version's info (``GalleryStore.info``): a gallery changes with every
    enrolment, so the page says which version it shows and whether that is the current one."""
    keys = {(m["source_uri"], CHECKIN_PX, None, None) for m in members if m.get("source_uri")}
    images = fetch_photos(storage, keys)
    figures = []
    for m in members:
        b64 = images.get((m.get("source_uri"), CHECKIN_PX, None, None))
        quality = "" if m.get("quality") is None else f"quality {m['quality']:.3f} · "
        figures.append(f"<figure>{_img(b64, 'checkin-photo', m['item_id'])}<figcaption>{_e(quality)}"
                       f"{'used in the template' if m['used'] else 'not used (below the enrolment threshold)'}"
                       f"<br>{_e(m.get('source_uri'))}</figcaption></figure>")
    which, note = "", ""
    if version is not None:
        n = version["version"]
        which = f", version {n}"
        state = "the current version" if current == n else f"not the current version (that is version {current})" \
            if current is not None else ""
        made = f"made {time_html(version['created_at'])}" if version.get("created_at") else ""
        note = "<p class='muted gallery-version' data-version='{}'>{}</p>".format(
            n, " · ".join(x for x in (f"gallery {_e(gallery)}@v{n}", state, made) if x))
    return (page_head(f"{employee_id} in {gallery}{which}") + f"<h1>{_e(employee_id)} — enrolment photos in gallery "
            f"{_e(gallery)}{which}</h1>{note}<div class='photos'>{''.join(figures)}</div></body></html>")
