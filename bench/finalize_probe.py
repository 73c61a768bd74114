"""``python -m bench.finalize_probe STORAGE_URL JOB_ID``: finalize a job's current run again, alone.

Run as its own process by ``python -m bench scale`` so that its time and peak RSS are those
of ``faceq.outputs.summary.finalize`` (plus the interpreter and imports), not of a worker. Reads the
run named in ``jobs/<id>/current.json``, rewrites its review.csv (and report.html if the job
has one) and summary.json — idempotent: the same parts give the same files — and prints one
JSON line: seconds, rows, peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import nullcontext


def main(argv: list[str]) -> int:
    storage_url, job_id = argv
    from faceq.job import spec as jobs
    from faceq.job.spec import JobHeader
    from faceq.settings import TrustThresholds
    from faceq.storage.store import open_storage
    from faceq.outputs.summary import finalize

    storage = open_storage(storage_url)
    run_id = json.loads(storage.get_bytes(jobs.current_run_key(job_id)))["run_id"]
    header = JobHeader.from_json(storage.get_bytes(jobs.header_key(job_id, run_id)))
    started = time.perf_counter()
    summary = finalize(storage, header, TrustThresholds(), lock=lambda _gallery: nullcontext())
    seconds = time.perf_counter() - started
    print(json.dumps({"job_id": job_id, "run_id": run_id, "seconds": round(seconds, 3), "n_rows": summary["n_rows"],
                      "needs_review": summary["counts"]["needs_review"],
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
