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

from devstack.processes import RedisServer, WorkerProcess
from faceq.settings import Settings
from devstack.samples import write_sample_set

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
    _say_which_model()
    samples = OUTPUT / "samples"
    expected = write_sample_set(samples, n_good=60)
    print(f"wrote {len(expected)} sample images to {samples} ({sum(v != 'ok' for v in expected.values())} broken)")
    worker = WorkerProcess(dict(os.environ), OUTPUT / "worker.log", device=os.environ.get("FACEQ_DEVICE", "cpu"))
    try:
        print(f"starting a worker (log: {worker.log_path}); loading and warming the model…")
        worker.start()
        from faceq.producer.__main__ import main as producer_main

        return producer_main(["audit", str(samples), "--mode", "crop", "--chunk-size", "16", "--wait", "--timeout", "600"])
    finally:
        worker.stop()
        if redis_server:
            redis_server.stop()
        print("stopped the demo worker" + (" and redis-server" if redis_server else ""))


def _say_which_model() -> None:
    """Before the job: real weights (and from where), or a placeholder run and how to get real ones."""
    settings = Settings.from_env()
    if settings.model_weights:
        print(f"model: RTS checkpoint {settings.model_weights}")
    elif settings.model_arch != "null":
        print(f"model: no RTS checkpoint (FACEQ_MODEL_WEIGHTS unset, nothing fetched into {settings.model_dir}): "
              f"the worker runs SEEDED RANDOM weights, so every score below is a PLACEHOLDER. For real results: "
              f"`faceq models fetch`, then `make demo` again.")


if __name__ == "__main__":
    sys.exit(main())
