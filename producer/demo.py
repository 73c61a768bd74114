"""``make demo``: one real audit job through the queue, on this machine, then clean up.

Starts a private redis-server (unless FACEQ_BROKER_URL is set) and one CPU worker with a
local file:// store, writes a small sample set with a few broken files, submits an audit
job with a progress bar, prints the summary and where the results are, and stops what it
started.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from faceq.devstack import RedisServer, WorkerProcess
from producer.samples import write_sample_set

OUTPUT = Path("demo-output").resolve()


def main() -> int:
    redis_server = None
    if not os.environ.get("FACEQ_BROKER_URL"):
        redis_server = RedisServer(OUTPUT / "redis").start()
        os.environ["FACEQ_BROKER_URL"] = redis_server.url
        print(f"started a private redis-server at {redis_server.url}")
    os.environ.setdefault("FACEQ_STORAGE_URL", (OUTPUT / "store").as_uri())
    # The samples are drawn face crops (no detector would find them): crop mode, and the
    # worker needs no YuNet weights for it.
    os.environ.setdefault("FACEQ_MODES", "crop")
    samples = OUTPUT / "samples"
    expected = write_sample_set(samples, n_good=60)
    print(f"wrote {len(expected)} sample images to {samples} ({sum(v != 'ok' for v in expected.values())} broken)")
    worker = WorkerProcess(dict(os.environ), OUTPUT / "worker.log", device=os.environ.get("FACEQ_DEVICE", "cpu"))
    try:
        print(f"starting a worker (log: {worker.log_path}); loading and warming the model…")
        worker.start()
        from producer.__main__ import main as producer_main

        return producer_main(["audit", str(samples), "--mode", "crop", "--chunk-size", "16", "--wait", "--timeout", "600"])
    finally:
        worker.stop()
        if redis_server:
            redis_server.stop()
        print("stopped the demo worker" + (" and redis-server" if redis_server else ""))


if __name__ == "__main__":
    sys.exit(main())
