"""The PACS followers (`ingest.watch`) when the PACS is away: a run that must end (``once``)
ends with the error after a few polls, and a stop is heard within the poll interval."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from core.errors import SourceError
from ingest.sources.base import ObjectRef
from ingest.watch import ONCE_ATTEMPTS, BackgroundPass, Cursor, DateCursor, follow, follow_qido, pause


class _AwayPacs:
    """A PACS that cannot be reached (the feed's edge of the world)."""

    def __init__(self) -> None:
        self.polls = 0

    def page(self, since: int, limit: int) -> tuple[list[str], int, bool]:
        self.polls += 1
        raise SourceError("cannot reach Orthanc at http://pacs.invalid: ConnectionError")

    def sop_uid(self, orthanc_id: str) -> str | None:
        raise AssertionError("no page was read")

    def list_since(self, since: str | None) -> list[ObjectRef]:
        self.page(0, 1)
        return []


def test_a_run_that_must_end_ends_with_the_error_when_the_pacs_stays_away(tmp_path: Path) -> None:
    """Found in the walkthrough: `watch --once` (a cron job) retried an unreachable PACS for
    good."""
    for name, run in {
        "changes": lambda pacs: follow(pacs, Cursor(tmp_path / "c.json"), lambda uids: None, once=True),
        "qido": lambda pacs: follow_qido(
            pacs.list_since, DateCursor(tmp_path / "q.json"), lambda refs: None, interval_s=0, once=True
        ),
    }.items():
        pacs = _AwayPacs()
        with pytest.raises(SourceError, match="cannot reach Orthanc"):
            run(pacs)
        assert pacs.polls == ONCE_ATTEMPTS, name


def test_a_stop_is_heard_within_the_poll_interval(tmp_path: Path) -> None:
    """Found in the walkthrough: a SIGTERM reached a watcher in its 60 s QIDO interval (or its retry
    wait) and it ended only when the interval was over."""
    stopping = threading.Event()
    threading.Timer(0.3, stopping.set).start()
    started = time.monotonic()
    pacs = _AwayPacs()
    stats = follow(pacs, Cursor(tmp_path / "c.json"), lambda uids: None, interval_s=60, stop=stopping.is_set)
    assert time.monotonic() - started < 2.0 and pacs.polls == 1 and stats.delivered == 0
    started = time.monotonic()
    pause(60, lambda: True)
    assert time.monotonic() - started < 0.1
    started = time.monotonic()
    pause(0.3, lambda: False)
    assert 0.3 <= time.monotonic() - started < 1.0


class _GrowingPacs:
    """A PACS whose change feed gains one instance per poll (the feed's edge of the world)."""

    def __init__(self) -> None:
        self.changes = 0

    def page(self, since: int, limit: int) -> tuple[list[str], int, bool]:
        self.changes += 1
        return [str(n) for n in range(since + 1, self.changes + 1)], self.changes, True

    def sop_uid(self, orthanc_id: str) -> str | None:
        return f"1.2.{orthanc_id}"


def test_new_instances_go_on_being_delivered_while_a_reconcile_pass_lists_the_pacs(tmp_path: Path) -> None:
    """Found in the walkthrough: a pass listing a large PACS (hours) held up the delivery of new
    instances until it was over; it now lists on a thread of its own."""
    listing_may_end, caller = threading.Event(), threading.get_ident()
    delivered: list[str] = []
    applied: list[tuple[list[str], int]] = []

    def list_pacs() -> list[str]:
        assert listing_may_end.wait(10)
        return ["missed"]

    running_pass = BackgroundPass(
        list_pacs, lambda found: applied.append((found, threading.get_ident())), name="test-pass"
    )

    def drained() -> None:
        running_pass.settle()
        if len(delivered) == 1:
            assert running_pass.start() and not running_pass.start()  # one pass at a time
        if len(delivered) == 5:
            assert applied == [] and running_pass.running  # four more delivered meanwhile
            listing_may_end.set()

    follow(
        _GrowingPacs(),
        Cursor(tmp_path / "c.json"),
        delivered.extend,
        interval_s=0.01,
        stop=lambda: bool(applied),
        drained=drained,
    )
    assert applied == [(["missed"], caller)] and len(delivered) >= 5 and not running_pass.running


def test_a_reconcile_pass_that_failed_raises_on_the_callers_thread() -> None:
    def broken() -> None:
        raise SourceError("cannot reach Orthanc")

    running_pass = BackgroundPass(broken, lambda found: None, name="test-pass")
    assert running_pass.start()
    with pytest.raises(SourceError, match="cannot reach Orthanc"):
        running_pass.finish()
    running_pass.finish()  # nothing left to raise
    assert running_pass.start()  # and the next pass can run
    with pytest.raises(SourceError):
        running_pass.finish()
