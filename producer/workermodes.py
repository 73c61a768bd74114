"""Refuse at submit a job whose mode no live worker serves, with advice that fits.

Workers list the modes they serve (``FACEQ_MODES``) in their heartbeats. A detect job sent
where every live worker serves only crop used to be accepted and then fail chunk by chunk;
like a storage mismatch, it is refused before anything is written. With no heartbeat at all
the job is accepted: it waits for a worker, as before.
"""

from __future__ import annotations

from faceq.job.spec import MODES


def mode_refusal(mode: str, heartbeats: list[dict]) -> str | None:
    """Why a ``mode`` job cannot run on these live workers, or None when one of them serves it
    (a heartbeat without ``modes`` comes from a worker that serves every mode)."""
    served = [set(beat.get("modes") or MODES) for beat in heartbeats]
    if not served or any(mode in modes for modes in served):
        return None
    others = sorted(set().union(*served))
    names = ", ".join(sorted(str(beat.get("worker", "?")) for beat in heartbeats))
    fix = ("start a worker with FACEQ_MODES=crop,detect (and the YuNet detector: `faceq models fetch`)"
           if mode == "detect" else f"start a worker with FACEQ_MODES={mode}")
    other = f", or submit with --mode {others[0]} if the images suit it" if others else ""
    return (f"no live worker serves {mode} mode (the {len(served)} live worker(s) {names} serve "
            f"{', '.join(others)} only): {fix}{other}")
