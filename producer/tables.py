"""What ``faceq jobs`` and ``faceq status`` print for people: a table, a few lines.

Scripts ask for ``--json`` (the full record, as before); a person wants state, progress,
counts and age at a glance, not 112 lines with histogram edges.
"""

from __future__ import annotations

import time

from faceq.job.ledger import JobProgress


def age(timestamp: float | None, now: float | None = None) -> str:
    """``35s``, ``12m``, ``3h``, ``2d`` ago (``-`` for none)."""
    if not timestamp:
        return "-"
    seconds = max(0, int((now or time.time()) - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def progress_text(progress: JobProgress) -> str:
    """``40/66 items (61%)``."""
    share = 100 * progress.items_done // progress.n_items if progress.n_items else 100
    return f"{progress.items_done}/{progress.n_items} items ({share}%)"


def state_text(progress: JobProgress) -> str:
    """The ledger's state, with ``failed`` for a running job that cannot complete."""
    return "failed" if progress.state == "running" and progress.cannot_complete else progress.state


def jobs_table(listing: list[JobProgress], now: float | None = None) -> str:
    """One row per job, newest first, columns aligned."""
    if not listing:
        return "no jobs (Redis keeps finished jobs for the ledger retention; `faceq jobs --all` shows one-off calls)"
    rows = [("JOB", "KIND", "STATE", "PROGRESS", "ERRORS", "FLAGGED", "AGE")]
    rows += [(p.job_id, p.kind, state_text(p), progress_text(p), str(p.errors), str(p.flagged),
              age(p.created_at, now)) for p in listing]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def status_lines(job_id: str, progress: JobProgress | None, summary: dict | None, storage_uri,
                 warning: str | None = None, now: float | None = None) -> list[str]:
    """A job's state in a few labelled lines; ``storage_uri(key)`` names outputs."""
    lines = [f"job {job_id}"]
    if progress is not None:
        lines.append(f"  state:      {state_text(progress)} ({progress.kind}), started {age(progress.created_at, now)} "
                     f"ago" + (f", finished {age(progress.finished_at, now)} ago" if progress.finished_at else ""))
        lines.append(f"  progress:   {progress_text(progress)}, chunks {progress.chunks_done}/{progress.n_chunks}")
        lines.append(f"  counts:     {progress.errors} errors, {progress.flagged} flagged for review")
        for index, reason in sorted(progress.failed.items())[:5]:
            lines.append(f"  failed:     {'chunk ' if index.isdigit() else ''}{index}: {reason}")
    else:
        lines.append("  state:      done (Redis has forgotten it: retention)")
    if summary is not None:
        counts = summary["counts"]
        lines.append(f"  rows:       {summary['n_rows']} for {summary['n_items']} items; status "
                     + ", ".join(f"{k} {v}" for k, v in sorted(counts["status"].items())))
        lines.append(f"  review:     {counts['needs_review']} flagged")
        for label, key in (("results", "results"), ("review list", "review"), ("report", "report")):
            lines.append(f"  {label + ':':<11} {storage_uri(summary['outputs'][key])}")
    if warning:
        lines.append(f"  WARNING:    {warning}")
    lines.append("  (--json for the full record)")
    return lines
