"""Shared core of faceq: settings, storage, the job model and its Redis ledger.

Used by both sides of the queue (``producer`` and ``workers``); imports no torch.
"""
