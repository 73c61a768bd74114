"""The Celery application, configured only from ``celeryconfig.py``.

Importing this module is cheap (no torch): producers import it to send tasks by name, and
only a worker imports ``workers.tasks`` (through ``include``) and with it the model.
"""

from celery import Celery

PROCESS_CHUNK = "faceq.process_chunk"
FINALIZE_JOB = "faceq.finalize_job"

app = Celery("faceq", include=["workers.tasks"])
app.config_from_object("celeryconfig")
