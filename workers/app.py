"""The Celery application, configured only from ``celeryconfig.py``.

Importing this module is cheap (no torch): producers import it to send tasks by name, and
only a worker imports ``faceq.workers.tasks`` (through ``include``) and with it the model.
"""

from __future__ import annotations

from celery import Celery

from faceq.queue.messages import FINALIZE_JOB, PROCESS_CHUNK  # noqa: F401  (the task names, for tasks.py)

app = Celery("faceq", include=["faceq.workers.tasks"])
app.config_from_object("faceq.workers.celeryconfig")
