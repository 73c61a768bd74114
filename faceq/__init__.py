"""faceq: face recognition with OOD quality scoring as asynchronous GPU jobs.

``from faceq import Client`` is the producer's entry point (``faceq.producer.client``). The
core below it, grouped by what it is about and imported by both sides of the queue without
torch: ``faceq.job`` (the job, its manifests and ledger), ``faceq.queue`` (broker URL, task
messages, heartbeats), ``faceq.storage`` (storage and the allow-list), ``faceq.outputs``
(results, summary, review queue, report, verdicts, guidance), ``faceq.gallery``.
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    """The client is imported on first use, so the workers and the core never load the producer."""
    if name in ("Client", "Job"):
        from faceq.producer import client

        return getattr(client, name)
    raise AttributeError(f"module 'faceq' has no attribute {name!r}")
