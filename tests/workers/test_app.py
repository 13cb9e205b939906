"""`create_celery`'s workaround for kombu's closed-connection race (the Redis-restart test in
`test_reliability.py` is where the race itself shows, about one run in four under load)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis.exceptions
from kombu.transport import redis as kombu_redis

from core.config import Settings
from workers.app import create_celery


def test_a_closed_broker_connection_is_a_connection_error_not_an_attribute_error() -> None:
    create_celery(Settings())
    create_celery(Settings())  # patched once, not wrapped twice
    closed = SimpleNamespace(connection=SimpleNamespace(client=None))
    with pytest.raises(redis.exceptions.ConnectionError, match="broker connection is closed"):
        kombu_redis.Channel._connparams(closed)
    assert getattr(kombu_redis.Channel._connparams, "radsearch_patched", False)
