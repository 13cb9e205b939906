"""Following a PACS: Orthanc's ``/changes`` feed, a durable cursor, at-least-once delivery.

`follow` reads the feed from the stored cursor, hands each page's new instances (SOP Instance
UIDs) to ``deliver`` and only then advances the cursor (written atomically): a watcher killed at
any point resumes from the last delivered page, so nothing is missed; an instance delivered twice
writes the same point ids (from its SOP Instance UID), so nothing is duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import requests

from core.errors import ConfigError, SourceError
from ingest.sources.base import ObjectRef

__all__ = [
    "ONCE_ATTEMPTS",
    "BackgroundPass",
    "Cursor",
    "DateCursor",
    "OrthancChanges",
    "WatchStats",
    "follow",
    "follow_qido",
    "orthanc_rest_url",
    "pause",
]

log = logging.getLogger(__name__)

# ``once``: polls in a row that may fail (the PACS restarting) before the run ends with the error.
ONCE_ATTEMPTS = 3
_STOP_CHECK_S = 0.2


def _save_json(path: Path, data: object) -> None:
    """Replace ``path`` by ``data`` as JSON in one step: a watcher killed meanwhile leaves the old
    file, never a part of the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Cursor:
    """The last change sequence number delivered, in a small JSON file replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            return int(json.loads(self.path.read_text(encoding="utf-8"))["last"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"watch cursor {self.path} is unreadable; delete it to start over") from exc

    def save(self, last: int) -> None:
        _save_json(self.path, {"last": last})


def cursor_path(data_dir: Path, source_name: str, collection: str) -> Path:
    """Where the cursor of a watch of ``source_name`` into ``collection`` lives."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{source_name}--{collection}")
    return data_dir / "watch" / f"{safe}.json"


def orthanc_rest_url(dicomweb_base: str) -> str:
    """Orthanc's REST root from its DICOMweb root (``http://h:8042/dicom-web`` → ``http://h:8042``):
    the plugin's root is one path segment under the REST API."""
    parts = urlsplit(dicomweb_base)
    path = parts.path.rstrip("/").rsplit("/", 1)[0]
    return f"{parts.scheme}://{parts.netloc}{path}"


class OrthancChanges:
    """Orthanc's change log (``GET /changes?since=&limit=``), new instances only."""

    def __init__(self, rest_url: str, session: requests.Session, *, timeout_s: float = 30.0) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.session = session
        self.timeout_s = timeout_s

    def _get(self, path: str, **params: int) -> requests.Response:
        try:
            response = self.session.get(f"{self.rest_url}{path}", params=params, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise SourceError(f"cannot reach Orthanc at {self.rest_url}: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code in (401, 403):
            raise SourceError(f"Orthanc at {self.rest_url} answered HTTP {response.status_code}")
        return response

    def page(self, since: int, limit: int) -> tuple[list[str], int, bool]:
        """(Orthanc ids of instances created after ``since``, the last sequence number read,
        whether the feed is drained)."""
        body = self._get("/changes", since=since, limit=limit).json()
        ids = [
            str(change["ID"])
            for change in body.get("Changes", [])
            if change.get("ChangeType") == "NewInstance"
        ]
        return ids, int(body.get("Last", since)), bool(body.get("Done", True))

    def sop_uid(self, orthanc_id: str) -> str | None:
        """The SOP Instance UID of an Orthanc instance; None once it is gone."""
        if not re.fullmatch(r"[0-9a-f-]{1,64}", orthanc_id):
            return None
        response = self._get(f"/instances/{orthanc_id}")
        if response.status_code == 404:
            return None
        value = (response.json().get("MainDicomTags") or {}).get("SOPInstanceUID")
        return str(value) if value else None


@dataclass
class WatchStats:
    rounds: int = 0
    delivered: int = 0
    last: int = 0


class ReconcileSchedule:
    """When a watcher's full pass over the PACS is due (neither feed records deletions, and the
    QIDO feed misses instances added later to older studies): every ``every_s`` seconds (0: never),
    counted from a stamp file beside the cursor, written at the watcher's first start and at each
    pass, so that a watcher run from cron with ``--once`` reconciles as often as a long-running one."""

    def __init__(self, path: Path, every_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.every_s = every_s
        self.clock = clock

    def _last(self) -> float | None:
        try:
            return float(json.loads(self.path.read_text(encoding="utf-8"))["at"])
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"watch stamp {self.path} is unreadable; delete it to start over") from exc

    def stamp(self) -> None:
        """Record a pass (or the first start) now."""
        _save_json(self.path, {"at": self.clock()})

    def start(self) -> None:
        """A watcher starts: a new one (no stamp yet) counts its first pass from now."""
        if self.every_s > 0 and self._last() is None:
            self.stamp()

    def due(self) -> bool:
        """Whether a pass is due."""
        last = self._last()
        return self.every_s > 0 and last is not None and self.clock() - last >= self.every_s


T = TypeVar("T")


class BackgroundPass(Generic[T]):
    """A long pass on a thread of its own, one at a time, whose result the caller's thread takes
    up once it is ready: a reconcile lists a whole PACS (hours for a large archive), and the
    watcher goes on indexing new instances meanwhile instead of waiting for it.

    ``work`` runs on the pass's thread (it must not share a connection with the caller's); its
    result is handed to ``apply`` on the thread that calls `settle` or `finish`, where an error
    ``work`` raised is raised again."""

    def __init__(self, work: Callable[[], T], apply: Callable[[T], None], *, name: str) -> None:
        self._work = work
        self._apply = apply
        self._name = name
        self._thread: threading.Thread | None = None
        self._results: list[T] = []  # the finished pass's, or its error's place left empty
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start a pass, unless one is running or its result is not taken up yet (False)."""
        if self._thread is not None:
            return False
        # a daemon: a watcher told to stop does not wait hours for a listing it will not use
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        try:
            self._results.append(self._work())
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            self._error = exc

    def settle(self) -> None:
        """Apply the finished pass's result here, if there is one; at once otherwise."""
        thread = self._thread
        if thread is None or thread.is_alive():
            return
        self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        self._apply(self._results.pop())

    def finish(self) -> None:
        """Wait for a running pass, then `settle` it."""
        if self._thread is not None:
            self._thread.join()
        self.settle()


def follow(
    feed: OrthancChanges,
    cursor: Cursor,
    deliver: Callable[[list[str]], None],
    *,
    interval_s: float = 1.0,
    page_size: int = 100,
    stop: Callable[[], bool] = lambda: False,
    once: bool = False,
    drained: Callable[[], None] = lambda: None,
) -> WatchStats:
    """Deliver the SOP Instance UIDs of new instances page by page, the cursor advanced after
    each delivered page; polls every ``interval_s`` once drained (``drained()`` called each time);
    ``once``: stop when drained."""
    stats = WatchStats(last=cursor.load())
    failures = 0
    while not stop():
        try:
            ids, last, done = feed.page(stats.last, page_size)
            uids = [uid for uid in (feed.sop_uid(i) for i in ids) if uid]
            if uids:
                deliver(uids)
                stats.delivered += len(uids)
        except SourceError as exc:
            # The PACS (or the radsearch server) is away for now: the same page again later.
            failures = _retry_or_raise(exc, failures, interval_s, stop, once=once)
            continue
        failures = 0
        if last > stats.last or stats.rounds == 0:
            cursor.save(last)
            stats.last = last
        stats.rounds += 1
        if done:
            drained()
            if once:
                break
            pause(interval_s, stop)
    return stats


def pause(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep ``seconds``, or less once ``stop()`` says so (checked every `_STOP_CHECK_S`): a
    watcher told to stop does not first sit out a minute's poll interval."""
    deadline = time.monotonic() + seconds
    while not stop() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, _STOP_CHECK_S))


def _retry_or_raise(
    exc: SourceError, failures: int, interval_s: float, stop: Callable[[], bool], *, once: bool
) -> int:
    """After a failed poll: wait and count it, or (``once``, `ONCE_ATTEMPTS` in a row) raise it, so
    that a run from cron or a timer ends with an error instead of retrying for good."""
    failures += 1
    if once and failures >= ONCE_ATTEMPTS:
        raise exc
    log.warning("watch: %s; retrying in %.1f s", exc, max(interval_s, 1.0))
    pause(max(interval_s, 1.0), stop)
    return failures


class DateCursor:
    """For servers without a change feed: the StudyDate a QIDO-RS poll starts from, and the ETag
    equivalents delivered since then (studies of that day are listed again by the next poll)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[str | None, set[str]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return raw.get("since"), set(raw.get("seen", []))
        except FileNotFoundError:
            return None, set()
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"watch cursor {self.path} is unreadable; delete it to start over") from exc

    def save(self, since: str | None, seen: set[str]) -> None:
        _save_json(self.path, {"since": since, "seen": sorted(seen)})


def follow_qido(
    list_since: Callable[[str | None], Iterable[ObjectRef]],
    cursor: DateCursor,
    deliver: Callable[[list[ObjectRef]], None],
    *,
    interval_s: float = 60.0,
    batch_size: int = 32,
    stop: Callable[[], bool] = lambda: False,
    once: bool = False,
    today: Callable[[], str] = lambda: datetime.now(UTC).strftime("%Y%m%d"),
    drained: Callable[[], None] = lambda: None,
) -> WatchStats:
    """Poll by QIDO-RS: every instance of studies dated from the cursor's day on that was not
    delivered yet, in batches; the cursor (day and delivered ETags) saved after each batch. Then
    the day moves to the day the poll started (late instances of older studies are not seen:
    that is what Orthanc's change feed is for)."""
    stats = WatchStats()
    failures = 0
    while not stop():
        since, seen = cursor.load()
        before = set(seen)
        started_day = today()
        try:
            batch: list[ObjectRef] = []
            for ref in list_since(since):
                if ref.etag in seen:
                    continue
                batch.append(ref)
                if len(batch) >= batch_size:
                    deliver(batch)
                    stats.delivered += len(batch)
                    seen.update(r.etag for r in batch)
                    cursor.save(since, seen)
                    batch = []
            if batch:
                deliver(batch)
                stats.delivered += len(batch)
                seen.update(r.etag for r in batch)
        except SourceError as exc:
            failures = _retry_or_raise(exc, failures, interval_s, stop, once=once)
            continue
        failures = 0
        # Kept while the day stays; on a new day only this round's (the new day's studies are among
        # them): the set stays about one day of instances. What was delivered earlier and is
        # listed again is delivered again: at-least-once, the same points.
        cursor.save(started_day, seen if since == started_day else seen - before)
        stats.rounds += 1
        drained()
        if once:
            break
        pause(interval_s, stop)
    return stats
