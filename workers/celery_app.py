"""Entry point for Celery's own tools (``celery -A workers.celery_app inspect ping``, Flower, beat).

This is an entry point like the ``radsearch`` command: settings are built here, from the environment, once.
``radsearch worker`` does not use this module.
"""

from __future__ import annotations

from core.config import load_settings
from workers.app import create_celery

app = create_celery(load_settings())
