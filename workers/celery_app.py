"""Entry point for Celery's own tools (``celery -A workers.celery_app inspect ping``, Flower, beat).

This is an entry point like the ``radsearch`` command: settings are built here, from the environment, once.
``radsearch worker`` does not use this module.
"""

from __future__ import annotations

from core.config import load_settings
from ingest.labels import check_subscription_templates
from workers.app import create_celery

settings = load_settings()
check_subscription_templates(settings.events.subscriptions)
app = create_celery(settings)
