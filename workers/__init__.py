"""faceq workers: a Celery worker per device holding the RTS model warm."""
