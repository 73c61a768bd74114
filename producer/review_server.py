"""``faceq review JOB_ID``: a small local page to work through a job's review queue.

The report's review queue, served on the loopback interface, with three buttons per item
(confirm, reject, retake) and a note: a click records the verdict exactly as ``faceq verdict``
does (jobs/<id>/verdicts.parquet and the gallery's verdict index). Every section pages
through all of its items, not only the first ones the static report lists, and a click on
a check-in photo opens it full size (read from storage, whatever the storage is, and
re-encoded as JPEG with the face box drawn).

Only the person who started it can use it: it listens on 127.0.0.1 only, every path starts
with a random token printed once on the terminal (anything else is 404), the Host header
must name the loopback address (no DNS rebinding), a verdict is recorded only from a form of
this origin (an exact ``Origin`` header; ``null`` and none are refused), and the page runs no
scripts (its Content-Security-Policy forbids them).

The reviewer's own credentials read the photos, so ``/photo`` reads only what a worker would:
a row this server listed, whose photo the worker read (no error row), and whose URI passes
the job's allow-list (``AllowedSources``: the reviewer's ``FACEQ_ALLOWED_SOURCES``, the
storage root and the roots in the job's header, as in ``faceq.workers.service``). Anything else is
404 with nothing read: a plan written by someone else cannot make this process fetch
``s3://other-bucket/…`` or a local file. Requests are parsed defensively (a Content-Length
that is missing, malformed or over 16 KiB is refused before any body is read) and served by
``faceq.httpserve.BoundedHTTPServer`` (bounded threads, timeouts).
"""

from __future__ import annotations

import base64
import html
import logging
import re
import secrets
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from faceq.job import spec as jobs
from faceq.storage.allow import AllowedSources
from faceq.errors import BadInputError, FaceqError
from faceq.outputs.wording import plural
from faceq.httpserve import BoundedHTTPServer
from faceq.outputs.guidance import guidance_for
from faceq.job.spec import JobHeader
from faceq.outputs.report import _CSS, checkin_key, photo, placeholder_banner, render_review_queue
from faceq.outputs.review_queue import SECTION_ROWS, ReviewQueue, flagged_page, write_review
from faceq.outputs.verdicts import VERDICTS

log = logging.getLogger(__name__)

FULL_PX = 2048  # full-size view: the photo re-encoded, at most this many pixels a side
MAX_FORM_BYTES = 16 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` on the page's
    # own form posts, and null is exactly what a sandboxed frame or a file:// page sends too.
    # The token in the URL still never leaves for another origin (the page links nowhere else).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_LENGTH = re.compile(r"^[0-9]{1,10}$")
_BACK = re.compile(r"^(section/[A-Za-z0-9_]+\?page=\d+)?$")
_ANCHOR = re.compile(r"^item-\d+$")


class ReviewServer:
    def __init__(self, client, job_id: str, port: int = 0, reviewer: str | None = None,
                 page_size: int = SECTION_ROWS):
        from faceq.producer.client import default_reviewer

        self.client = client
        self.storage = client.storage
        self.job = client.job(job_id)
        self.summary = self.job.summary
        self.header = JobHeader.from_json(self.storage.get_bytes(jobs.header_key(job_id, self.summary["run_id"])))
        self.alerted = {a["source"] for a in self.summary["alerts"]}
        # what a worker of this job may read (faceq.workers.service.ChunkProcessor.allowed_sources)
        self.allowed = AllowedSources.parse("", (*client.settings.allowed_sources, self.storage.url,
                                                 *self.header.allowed_sources))
        self.reviewer = reviewer or default_reviewer()
        self.page_size = page_size
        with tempfile.TemporaryDirectory(prefix="faceq-review-") as tmp:  # counts and first rows: one pass
            _, self.queue = write_review(self.storage, self.header, self.alerted, Path(tmp) / "review.csv",
                                         thresholds=self.summary.get("thresholds"), section_rows=page_size)
        self.token = secrets.token_urlsafe(18)
        self._photos: dict[tuple[str, int], dict] = {}  # (item_id, face_index) → row: what /photo may read
        self._lock = threading.Lock()
        self.httpd = BoundedHTTPServer(("127.0.0.1", port), _handler(self), threads=4, max_connections=64,
                                       head_timeout=30.0, io_timeout=30.0, name="faceq-review-http")

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.token}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> "ReviewServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="faceq-review").start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- pages ----------------------------------------------------------------------------------

    def _remember(self, rows) -> None:
        with self._lock:
            for row in rows:
                self._photos[(row["item_id"], row.get("face_index") or 0)] = row

    def _photo_link(self, row: dict) -> str:
        return f"/{self.token}/photo?item={quote(row['item_id'], safe='')}&face={row.get('face_index') or 0}"

    def _reviewed(self) -> dict[str, dict]:
        """item id → its newest verdict (read at each page: another reviewer's clicks show too)."""
        return {str(v["item_id"]): v for v in self.job.verdicts(latest=True)}

    def _progress(self, reviewed: dict[str, dict]) -> str:
        """``3 of 5 reviewed``: the queue's items with a verdict (verdicts only come from it)."""
        total = sum(self.queue.counts.values())
        done = min(len(reviewed), total)
        return (f"<p class='review-progress'><strong>{done} of {total} reviewed</strong>"
                f"<progress max='{total}' value='{done}'></progress></p>")

    def _form(self, back: str, reviewed: dict[str, dict] | None = None):
        reviewed = reviewed or {}

        def form(row: dict, anchor: str) -> str:
            e = lambda v: html.escape(str(v), quote=True)  # noqa: E731
            # one group that never wraps apart: a misclick lands on a neighbour, not a stray field
            buttons = "<span class='verdict-buttons'>" + " ".join(
                f"<button type='submit' name='verdict' value='{v}'>{label}</button>" for v, label in
                (("confirmed", "Confirm"), ("rejected", "Reject"), ("retake", "Retake"))) + "</span>"
            done = reviewed.get(str(row["item_id"]))
            mark = (f"<p class='reviewed'>✓ reviewed: {e(done['verdict'])} by {e(done.get('reviewer') or '—')}"
                    + (f" — {e(done['note'])}" if done.get("note") else "") + " (a new verdict replaces it)</p>"
                    if done else "")
            return (f"{mark}<form class='verdict-form' method='post' action='/{self.token}/verdict'>"
                    f"<input type='hidden' name='item_id' value='{e(row['item_id'])}'>"
                    f"<input type='hidden' name='back' value='{e(back)}'><input type='hidden' name='anchor' "
                    f"value='{e(anchor)}'>{buttons} <input name='note' placeholder='note (optional)' "
                    f"maxlength='2000' size='28'> <input name='reviewer' value='{e(self.reviewer)}' maxlength='128' "
                    f"size='10' aria-label='reviewer'></form>")
        return form

    def _page(self, title: str, body: str) -> str:
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{_CSS} form.verdict-form{{margin-top:6px}} .verdict-buttons{{white-space:nowrap;"
                f"display:inline-block;margin-right:8px}} .verdict-buttons button{{min-width:5em}} "
                f"p.reviewed{{color:#1a7f37;font-weight:600;margin:6px 0 0}} "
                f"progress{{margin-left:10px;vertical-align:middle}}</style></head><body>{body}</body></html>")

    def _section_note(self, section: str, count: int, listed: int) -> str:
        if count <= listed:
            return plural(count, "item")
        return (f"first {listed} of {count} — <a class='more' href='/{self.token}/section/{section}?page=2'>"
                f"next {min(self.page_size, count - listed)} →</a>")

    def overview(self) -> str:
        self._remember(self.queue)
        reviewed = self._reviewed()
        job = html.escape(self.summary["job_id"])
        intro = (f"<p>{plural(sum(self.queue.counts.values()), 'item')} to review, most urgent first. Record a verdict "
                 f"with the buttons; it is stored with the job and shown beside the employee's later flags.</p>")
        body = (f"<h1>Review: {self.summary['kind']} job <code>{job}</code></h1><p class='muted'>gallery "
                f"{html.escape(str(self.summary.get('gallery') or '—'))} · reviewer "
                f"{html.escape(self.reviewer)}</p>" + self._progress(reviewed) + placeholder_banner(self.summary)
                + render_review_queue(self.summary, self.queue, self.storage, self.header.decides,
                                      photo_link=self._photo_link, row_extra=self._form("", reviewed),
                                      section_note=self._section_note, intro=intro))
        return self._page(f"review {self.summary['job_id']}", body)

    def section(self, section: str, page: int) -> str:
        count = self.queue.counts.get(section, 0)
        pages = max(1, -(-count // self.page_size))
        if not count or not 1 <= page <= pages:
            raise LookupError(section)
        rows = flagged_page(self.storage, self.header, self.alerted, section, (page - 1) * self.page_size,
                            self.page_size)
        self._remember(rows)
        queue = ReviewQueue(self.header.decides, section_rows=self.page_size, total_rows=self.page_size)
        for row in rows:
            queue.add(row, folded=False)
        queue.counts[section] = count
        queue.employees = {}
        start = (page - 1) * self.page_size
        nav = [f"<a href='/{self.token}/'>overview</a>"]
        if page > 1:
            nav.append(f"<a class='previous' href='/{self.token}/section/{section}?page={page - 1}'>← previous</a>")
        if page < pages:
            nav.append(f"<a class='next' href='/{self.token}/section/{section}?page={page + 1}'>next →</a>")
        note = lambda *_: f"items {start + 1}–{start + len(rows)} of {count} · " + " · ".join(nav)  # noqa: E731
        reviewed = self._reviewed()
        body = (f"<h1>{html.escape(guidance_for(section).title)} — page {page} of {pages}</h1>"
                + self._progress(reviewed) + placeholder_banner(self.summary)
                + render_review_queue(self.summary, queue, self.storage, self.header.decides,
                                      photo_link=self._photo_link,
                                      row_extra=self._form(f"section/{section}?page={page}", reviewed),
                                      section_note=note, intro=""))
        return self._page(f"review {self.summary['job_id']}: {section} page {page}", body)

    def full_photo(self, item_id: str, face: int) -> bytes:
        """The photo of a listed row, re-encoded; LookupError (404), with nothing read, for a row
        not listed, one whose photo the worker did not read, or a URI outside the allow-list."""
        with self._lock:
            row = self._photos.get((item_id, face))
        if row is None or checkin_key(row) is None:  # not listed, or an error row: not read by the worker
            raise LookupError(item_id)
        try:
            uri = self.allowed.check(row["source_uri"])
        except BadInputError:
            log.warning("review page: photo of item %r refused: %s", item_id, "outside the job's allowed sources")
            raise LookupError(item_id) from None
        encoded = photo(self.storage, uri, FULL_PX, row.get("bbox"), row.get("landmarks"), scale=1.0)
        if encoded is None:
            raise LookupError(item_id)
        return base64.b64decode(encoded)

    def record(self, form: dict[str, str]) -> str:
        """Record the posted verdict; returns where to send the browser back to."""
        verdict, back, anchor = form.get("verdict", ""), form.get("back", ""), form.get("anchor", "")
        if verdict not in VERDICTS or not _BACK.match(back) or (anchor and not _ANCHOR.match(anchor)):
            raise ValueError("malformed verdict form")
        reviewer = form.get("reviewer") or self.reviewer
        self.job.record_verdict(form.get("item_id", ""), verdict, form.get("note", ""), reviewer)
        self.reviewer = reviewer
        return f"/{self.token}/{back}" + (f"#{anchor}" if anchor else "")


def _handler(server: ReviewServer):
    class Handler(BaseHTTPRequestHandler):
        server_version = "faceq-review"
        sys_version = ""

        def log_message(self, format, *args):  # noqa: A002 - the token stays out of the logs
            log.debug("review page: %s", (format % args).replace(server.token, "…"))

        def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
            self.send_response(status)
            for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _text(self, status: int, message: str) -> None:
            self._send(status, server._page("faceq review", f"<p>{html.escape(message)}</p>").encode(),
                       "text/html; charset=utf-8")

        def _route(self) -> tuple[str, dict] | None:
            """The path after the token, and the query; None (answered 404/421) otherwise."""
            if self.headers.get("Host") not in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
                self._text(421, "wrong host")
                return None
            parts = urlsplit(self.path)
            prefix = f"/{server.token}/"
            if not parts.path.startswith(prefix):
                self._text(404, "not found")
                return None
            return parts.path[len(prefix):], parse_qs(parts.query)

        def do_GET(self):  # noqa: N802
            self._guarded(self._get)

        def do_POST(self):  # noqa: N802
            self._guarded(self._post)

        def _guarded(self, answer) -> None:
            try:
                answer()
            except OSError:  # the client went away or timed out
                raise
            except Exception as exc:  # a bug answers 500: never a dropped connection, never the token
                log.error("review page: %s failed: %s", self.command, type(exc).__name__)
                self._text(500, "internal error")

        def _get(self) -> None:
            route = self._route()
            if route is None:
                return
            path, query = route
            try:
                if path == "":
                    self._send(200, server.overview().encode(), "text/html; charset=utf-8")
                elif path.startswith("section/"):
                    page = int((query.get("page") or ["1"])[0])
                    self._send(200, server.section(path[len("section/"):], page).encode(), "text/html; charset=utf-8")
                elif path == "photo":
                    data = server.full_photo((query.get("item") or [""])[0], int((query.get("face") or ["0"])[0]))
                    self._send(200, data, "image/jpeg")
                else:
                    self._text(404, "not found")
            except (LookupError, ValueError):
                self._text(404, "not found")
            except FaceqError as exc:
                self._text(400, str(exc))

        def _length(self) -> int | None:
            """The body's length, or None once refused: 411 without one, 400 when it is not one plain
            decimal (negative, text, repeated, or chunked), 413 over MAX_FORM_BYTES. Nothing is read."""
            values = self.headers.get_all("Content-Length") or []
            if self.headers.get("Transfer-Encoding"):
                self._text(411 if not values else 400, "send the form with a Content-Length, not chunked")
                return None
            if not values:
                self._text(411, "a Content-Length is required")
                return None
            if len(values) > 1 or not _LENGTH.match(values[0].strip()):
                self._text(400, "malformed Content-Length")
                return None
            length = int(values[0])
            if length > MAX_FORM_BYTES:
                self._text(413, f"a verdict form is at most {MAX_FORM_BYTES} bytes")
                return None
            return length

        def _post(self) -> None:
            route = self._route()
            if route is None:
                return
            path, _ = route
            if path != "verdict":
                self._text(404, "not found")
                return
            # Exactly this origin. Browsers send Origin on every form POST (Referrer-Policy is
            # same-origin, so not `null`); a missing one is refused too: only a non-browser client
            # omits it, and the page's own forms never do.
            if self.headers.get("Origin") != f"http://{self.headers.get('Host')}":
                self._text(403, "cross-origin form refused")
                return
            if not (self.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
                self._text(400, "not a verdict form")
                return
            length = self._length()
            if length is None:
                return
            body = self.rfile.read(length)
            if len(body) != length:
                self._text(400, "the form ended early")
                return
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
            try:
                location = server.record(form)
            except ValueError:
                self._text(400, "malformed verdict form")
                return
            except FaceqError as exc:
                self._text(400, f"not recorded: {exc}")
                return
            self._send(303, b"", "text/plain", {"Location": location})

    return Handler
