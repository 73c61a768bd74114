"""Shared core of faceq: settings, storage, the job model and its Redis ledger.

Used by both sides of the queue (``producer`` and ``workers``); imports no torch.
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    """``from faceq import Client`` without importing the producer when only the core is used."""
    if name in ("Client", "Job"):
        from faceq.producer import client

        return getattr(client, name)
    raise AttributeError(f"module 'faceq' has no attribute {name!r}")
