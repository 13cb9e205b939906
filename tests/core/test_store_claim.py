"""One live server per store id on a Redis database (`core.store_claim`): a copy of a data dir is
refused while the original's server lives; the claim of a server that is gone is taken; a claim
Redis lost is taken again. A real redis-server; other hosts are this host under another name."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from core.config import RedisSettings, Settings
from core.errors import ConfigError
from core.store_claim import StoreClaim, claim_store
from core.store_identity import store_id
from tests.workers.conftest import RedisServer, redis_server

__all__ = ["redis_server"]

_TTL_S = 1.5


def _deployment(tmp_path: Path, name: str, redis: RedisServer) -> Settings:
    return Settings(data_dir=tmp_path / name, redis=RedisSettings(url=redis.url))


def _copy(settings: Settings, tmp_path: Path, name: str) -> Settings:
    """A copy of the data dir (its store id file, the part that matters here)."""
    store_id(settings)
    copy = settings.model_copy(update={"data_dir": tmp_path / name})
    copy.index_dir.mkdir(parents=True)
    shutil.copy(settings.index_dir / "store-id", copy.index_dir / "store-id")
    assert store_id(copy) == store_id(settings)
    return copy


def _on_host(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: host)


def test_a_copy_is_refused_while_the_original_serves_then_takes_over(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    original = _deployment(tmp_path, "a", redis_server)
    copy = _copy(original, tmp_path, "b")
    first = claim_store(original, ttl_s=_TTL_S)
    try:
        started = time.monotonic()
        with pytest.raises(ConfigError) as refused:  # this host, its pid running: at once
            claim_store(copy, ttl_s=_TTL_S)
        assert time.monotonic() - started < _TTL_S / 2
        message = str(refused.value)
        assert f"store id {store_id(original)} is already claimed" in message
        assert f"data dir {(tmp_path / 'a').resolve()} on host {socket.gethostname()}" in message
        assert (
            f"for this one: remove {copy.index_dir / 'store-id'} and start again, or set RADSEARCH_STORE__ID"
            in message
        )
        # a copy with an id of its own is no copy of that store
        (copy.index_dir / "store-id").unlink()
        own = claim_store(copy, ttl_s=_TTL_S)
        assert own.held and own.store_id != store_id(original)
        own.close()
    finally:
        first.close()
    assert claim_store(_copy(original, tmp_path, "c"), ttl_s=_TTL_S).held  # let go at its close


def test_another_hosts_server_is_live_while_it_renews_and_lapses_once_gone(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = _deployment(tmp_path, "a", redis_server)
    _on_host(monkeypatch, "pacs-gateway-2")
    elsewhere = claim_store(original, ttl_s=_TTL_S)
    monkeypatch.undo()
    copy = _copy(original, tmp_path, "b")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="on host pacs-gateway-2"):  # seen renewed
        claim_store(copy, ttl_s=_TTL_S)
    assert time.monotonic() - started < _TTL_S
    elsewhere._stop.set()  # it dies without letting go: its claim lapses, and is taken
    started = time.monotonic()
    taken = claim_store(copy, ttl_s=_TTL_S)
    assert taken.held and 0.2 < time.monotonic() - started < _TTL_S + 1.5
    taken.close()


def test_the_claim_of_a_server_of_this_host_that_is_gone_is_taken_at_once(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = _deployment(tmp_path, "a", redis_server)
    killed = StoreClaim(original, ttl_s=60)  # its last life, killed -9
    assert killed.take()
    started = time.monotonic()
    restarted = claim_store(original, ttl_s=60)  # the same data dir: its lock is ours
    assert restarted.held and time.monotonic() - started < 1
    restarted.close()

    ended = subprocess.Popen(["true"])  # a server of this host, of another data dir, that ended
    ended.wait()
    monkeypatch.setattr(os, "getpid", lambda: ended.pid)
    gone = StoreClaim(original, ttl_s=60)
    monkeypatch.undo()
    assert gone.take()
    copy = claim_store(_copy(original, tmp_path, "b"), ttl_s=60)
    assert copy.held
    copy.close()


def test_a_claim_redis_lost_is_taken_again_and_a_later_rival_is_logged_once(
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = _deployment(tmp_path, "a", redis_server)
    redis_server.kill()
    deferred = StoreClaim(original, ttl_s=_TTL_S)
    assert deferred.take() is False and not deferred.held  # no Redis: the server starts
    redis_server.start()
    deferred.renew()
    assert deferred.held
    redis_server.restart()  # keeps nothing on disk: the claim is gone
    deferred.renew()
    assert deferred.held and _client(redis_server).exists(f"radsearch:store-claim:{deferred.store_id}")

    # another host's server took it while this one was cut off: logged once, not fought over
    _client(redis_server).delete(f"radsearch:store-claim:{deferred.store_id}")
    _on_host(monkeypatch, "staging-1")
    rival = claim_store(original, ttl_s=_TTL_S)
    monkeypatch.undo()
    with caplog.at_level(logging.ERROR, logger="core.store_claim"):
        deferred.renew()
        deferred.renew()
    assert not deferred.held and rival.held
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "on host staging-1" in errors[0], errors
    deferred.close()  # lets go of its own claim only
    assert _client(redis_server).exists(f"radsearch:store-claim:{deferred.store_id}")
    rival.close()


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)
