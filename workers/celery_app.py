"""Entry point for Celery's own tools (``celery -A workers.celery_app inspect ping``, Flower, beat).

This is an entry point like the ``radsearch`` command: settings are built here, from the environment, once.
``radsearch worker`` does not use this module.
"""

from __future__ import annotations

import os

from core.config import Settings, check_setting_variables
from workers.app import create_celery

check_setting_variables(os.environ)
app = create_celery(Settings())
