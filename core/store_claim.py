"""One live server per store id on a Redis database: a copy of a data dir never serves beside it.

A copy of a data dir (a backup restored on a staging host, a folder copied on a workstation) keeps
its store id (`core.store_identity`). Served beside the original on the same Redis database, the
two look like one store: a worker of either runs the Celery jobs of both and writes each one's
images into its own collections. So the server that owns an embedded store claims its id on the
broker's Redis (``radsearch:store-claim:<id>``, a value that names the claimer's host, data dir
and pid, renewed every third of its time to live), and refuses to start while another live server
holds the claim.

A claim is live while it is renewed. At start: no claim, or one of this very data dir on this host
(the last life of this owner, killed before it let go), is taken; one of another process of this
host is live while that pid runs; one of another host is live if it is renewed within its time to
live (a claimer that died lets it lapse, and it is then taken). Where Redis cannot be reached (a
workstation without it), nothing is checked until it can: the renewal then claims, and logs an
error if another server holds the id.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import cast

import redis

from core.config import Settings
from core.errors import ConfigError
from core.jobs.redis_store import broker_client
from core.ownership import pid_alive
from core.store_identity import store_id

__all__ = ["StoreClaim", "claim_store"]

logger = logging.getLogger(__name__)

_KEY = "radsearch:store-claim:{}"
_TTL_S = 30.0
# Renews the claim while it is ours; a claim of another instance is left as it is.
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, string.len(ARGV[1])) ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
"""
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, string.len(ARGV[1])) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class _Claimer:
    """Who holds a claim: a token of the process's claim, its host, data dir and pid."""

    instance: str
    host: str
    data_dir: str
    pid: int

    def value(self) -> str:
        # the token first, for the scripts' prefix test; the time makes every renewal a change
        return f"{self.instance} {json.dumps({**asdict(self), 'renewed_at': time.time()})}"

    @classmethod
    def parse(cls, value: str) -> _Claimer | None:
        try:
            fields = json.loads(value.split(" ", 1)[1])
            return cls(
                str(fields["instance"]), str(fields["host"]), str(fields["data_dir"]), int(fields["pid"])
            )
        except (IndexError, ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"the radsearch server of data dir {self.data_dir} on host {self.host} (pid {self.pid})"


class StoreClaim:
    """This server's claim on its store id (`claim_store`); `close` lets it go."""

    def __init__(self, settings: Settings, *, ttl_s: float = _TTL_S) -> None:
        self._client = broker_client(settings)
        self._settings = settings
        self.store_id = store_id(settings)
        self._key = _KEY.format(self.store_id)
        self._ttl_ms = int(ttl_s * 1000)
        self._ttl_s = ttl_s
        self._me = _Claimer(
            uuid.uuid4().hex, socket.gethostname(), str(settings.data_dir.resolve()), os.getpid()
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False
        self._reported: str | None = None  # the other claimer last logged, not logged again

    @property
    def held(self) -> bool:
        """Whether this server holds the claim (as of the last take or renewal)."""
        return self._held

    def take(self) -> bool:
        """Claim the id: True once held, False where Redis cannot be reached (nothing checked);
        `ConfigError` naming the server that holds it."""
        try:
            return self._take()
        except redis.RedisError as exc:
            logger.info("store id claim deferred: Redis (the broker) not reachable (%s)", type(exc).__name__)
            return False

    def _take(self) -> bool:
        deadline = time.monotonic() + self._ttl_s + 1.0
        first_seen: str | None = None
        while True:
            if self._client.set(self._key, self._me.value(), px=self._ttl_ms, nx=True):
                self._held = True
                return True
            held = cast(str | None, self._client.get(self._key))
            if held is None:
                continue  # it lapsed in between
            other = _Claimer.parse(held)
            if other is None or self._gone(other):
                self._client.set(self._key, self._me.value(), px=self._ttl_ms)
                self._held = True
                return True
            if other.host == self._me.host or (first_seen is not None and held != first_seen):
                raise self._conflict(other)
            if first_seen is None:
                first_seen = held
                logger.info(
                    "store id %s is claimed by %s: waiting up to %.0f s for it to lapse",
                    self.store_id,
                    other.describe(),
                    self._ttl_s,
                )
            if time.monotonic() > deadline:
                raise self._conflict(other)
            time.sleep(min(1.0, self._ttl_s / 10))

    def _gone(self, other: _Claimer) -> bool:
        """Whether the claimer is known to be gone: a server of this host whose pid has ended, or
        one of this data dir (whose owner lock is ours: the last life of this owner)."""
        return other.host == self._me.host and (
            other.data_dir == self._me.data_dir or not pid_alive(other.pid)
        )

    def _conflict(self, other: _Claimer) -> ConfigError:
        index_dir = self._settings.index_dir
        return ConfigError(
            f"store id {self.store_id} is already claimed on this Redis (the broker) by "
            f"{other.describe()}: one of the two data dirs is a copy of the other, and served side by "
            "side they would run each other's Celery jobs. Give the copy an id of its own (for this "
            f"one: remove {index_dir / 'store-id'} and start again, or set RADSEARCH_STORE__ID), or a "
            "Redis database of its own (RADSEARCH_REDIS__URL=redis://HOST:6379/1)"
        )

    def renew(self) -> None:
        """Renew the claim (or take it, where it was deferred or lost); log an error, once per
        claimer, where another server holds it."""
        try:
            held = self._client.eval(_RENEW, 1, self._key, self._me.instance, self._me.value(), self._ttl_ms)
        except redis.RedisError as exc:
            logger.debug("store id claim not renewed: %s", type(exc).__name__)
            return
        if held is None:
            self._held = True
            self._reported = None
            return
        other = _Claimer.parse(held)
        self._held = False
        if other is not None and other.instance != self._reported:
            self._reported = other.instance
            logger.error("%s", self._conflict(other))

    def start_renewing(self) -> None:
        """Renew every third of the time to live, on a thread of its own, until `close`."""

        def run() -> None:
            while not self._stop.wait(self._ttl_s / 3):
                self.renew()

        self._thread = threading.Thread(target=run, name="store-claim", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop renewing and let the claim go (only ours: one another server took is left)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._client.eval(_RELEASE, 1, self._key, self._me.instance)
        except redis.RedisError:
            pass  # it lapses by itself
        finally:
            self._client.close()


def claim_store(settings: Settings, *, ttl_s: float = _TTL_S) -> StoreClaim:
    """The server's claim on its store id, taken and renewed (see the module); `ConfigError` where
    another live server holds it. Close it as the server stops."""
    claim = StoreClaim(settings, ttl_s=ttl_s)
    try:
        claim.take()
    except BaseException:
        claim.close()
        raise
    claim.start_renewing()
    return claim
