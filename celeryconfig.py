"""faceq's Celery settings, for `celery --config celeryconfig …` run from a checkout.

The settings live in ``workers/celeryconfig.py``, installed as ``faceq.workers.celeryconfig``
(the workers and Flower read that one): a top-level ``celeryconfig`` module in site-packages
would shadow, or be shadowed by, every other Celery project's.
"""

from faceq.workers.celeryconfig import *  # noqa: F401,F403
