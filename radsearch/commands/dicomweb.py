"""Command-line parts for PACS sources (``dicomweb+http(s)://``): the ``ingest`` selectors and
``radsearch watch``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.config import Settings
from core.errors import BadInput, ConfigError, DeletionRefused, RadsearchError, SourceError
from ingest.prune import DEFAULT_MAX_DELETE_FRACTION
from ingest.sources.base import ObjectRef
from radsearch.commands.arg_types import fraction, http_url, seconds

if TYPE_CHECKING:
    from ingest.watch import BackgroundPass

__all__ = ["add_selector_options", "add_watch_command", "apply_selectors"]

log = logging.getLogger(__name__)


def add_selector_options(parser: argparse.ArgumentParser) -> None:
    """``--study UID`` (repeatable), ``--modality CT``, ``--since YYYY-MM-DD``: which instances of a
    DICOMweb source to take."""
    group = parser.add_argument_group("DICOMweb selectors (dicomweb+http(s):// sources only)")
    group.add_argument(
        "--study", action="append", dest="dicomweb_studies", metavar="UID", help="a Study Instance UID"
    )
    group.add_argument("--modality", dest="dicomweb_modality", metavar="CODE", help="e.g. CT")
    group.add_argument("--since", dest="dicomweb_since", metavar="YYYY-MM-DD", help="studies from this date")


def apply_selectors(args: argparse.Namespace) -> None:
    """Fold the selector options into ``args.source``'s query string (so the source URI alone says
    what to take, through Celery jobs and servers too); `ConfigError` for selectors on another
    kind of source."""
    studies = getattr(args, "dicomweb_studies", None)
    modality = getattr(args, "dicomweb_modality", None)
    since = getattr(args, "dicomweb_since", None)
    if not (studies or modality or since):
        return
    from ingest.sources.dicomweb import is_dicomweb_uri, parse_dicomweb_uri, with_selectors

    if not is_dicomweb_uri(args.source):
        raise ConfigError("--study, --modality and --since apply to dicomweb+http(s):// sources only")
    args.source = with_selectors(args.source, studies=studies, modality=modality, since=since)
    parse_dicomweb_uri(args.source)  # a bad selector fails here, before anything is opened


def add_watch_command(sub: Any) -> None:
    """``radsearch watch dicomweb+http(s)://HOST/PREFIX --collection NAME``."""
    watch = sub.add_parser(
        "watch",
        help="follow a PACS (Orthanc's change feed) and index each new instance",
        description="Follow Orthanc's /changes feed from a cursor kept in the data dir (resumable, "
        "at-least-once) and index each new instance: here, or through the radsearch server "
        "(--url or the store's serving owner) by STOW-RS.",
    )
    watch.add_argument("source", help="dicomweb+http(s)://HOST[:PORT]/PREFIX of an Orthanc")
    watch.add_argument("--collection", required=True)
    watch.add_argument("--encoder", help="encoder for a new collection (default: baseline)")
    watch.add_argument(
        "--orthanc-url", type=http_url, help="Orthanc's REST root (default: the DICOMweb root's parent)"
    )
    watch.add_argument("--interval", type=seconds, default=1.0, help="seconds between polls once drained")
    watch.add_argument(
        "--once",
        action="store_true",
        help="stop once the feed is drained (a PACS still away after 3 polls in a row: exit 1)",
    )
    watch.add_argument(
        "--feed",
        choices=("orthanc", "qido"),
        default="orthanc",
        help="orthanc: its /changes feed (default); qido: any DICOMweb server, polled by StudyDate",
    )
    watch.add_argument(
        "--reconcile-every",
        type=seconds,
        default=6 * 3600.0,
        metavar="SECONDS",
        help="a full pass over the PACS this often (default 6 h; 0: never): delete the points of "
        "instances deleted there (no feed records deletions; the deletion guard applies) and index "
        "what the feed missed",
    )
    watch.add_argument(
        "--max-delete-fraction",
        type=fraction,
        default=DEFAULT_MAX_DELETE_FRACTION,
        help="a reconcile pass deletes nothing when more than this fraction of the collection's "
        f"objects is gone from the PACS (default {DEFAULT_MAX_DELETE_FRACTION})",
    )
    watch.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    watch.set_defaults(handler=_cmd_watch, remote_handler=_cmd_watch_remote, remote_mode="store")


def _stop_on_signals() -> Callable[[], bool]:
    """A stop the first SIGTERM or SIGINT asks for: the watcher ends after the page in hand, its
    cursor saved. A second one stops it at once (`KeyboardInterrupt`, exit 130). The handler takes
    no lock: one that the signal interrupted the main thread holding is never released (Ctrl-C
    twice, or a SIGTERM and then a SIGINT, left the watcher hung for good)."""
    stopping = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            raise KeyboardInterrupt
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return lambda: stopping


def _follow(
    args: argparse.Namespace,
    settings: Settings,
    source: Any,
    deliver: Callable[[list[Any]], None],
    reconcile: Callable[[], bool],
    running_pass: BackgroundPass[Any] | None = None,
) -> int:
    """Follow the PACS (``--feed``), handing each batch of new instances' references to ``deliver``,
    and calling ``reconcile`` once drained when ``--reconcile-every`` has passed (False: it did not
    start one). ``running_pass``: the reconcile's, settled whenever the feed is drained, and waited
    for at the end of a ``--once`` run."""
    from ingest.sources.dicomweb import make_session, with_since
    from ingest.sources.factory import open_dicomweb
    from ingest.watch import (
        Cursor,
        DateCursor,
        OrthancChanges,
        ReconcileSchedule,
        cursor_path,
        follow,
        follow_qido,
        orthanc_rest_url,
    )

    path = cursor_path(settings.data_dir, source.name, args.collection)
    schedule = ReconcileSchedule(path.with_name(path.stem + "-reconciled.json"), args.reconcile_every)
    schedule.start()
    reconciled = 0

    def drained() -> None:
        nonlocal reconciled
        if running_pass is not None:
            running_pass.settle()
        if schedule.due():
            schedule.stamp()  # a pass that fails waits for the next interval, not the next poll
            reconciled += reconcile()

    if args.feed == "qido":

        def list_since(since: str | None) -> Any:
            # The poll's day replaces an earlier --since of the source URI.
            uri = with_since(args.source, since) if since else args.source
            polled = open_dicomweb(uri, settings, name=source.name)
            try:
                yield from polled.list()
            finally:
                polled.close()

        stats = follow_qido(
            list_since,
            DateCursor(path.with_name(path.stem + "-qido.json")),
            deliver,
            interval_s=args.interval,
            batch_size=settings.ingest.batch_size,
            stop=_stop_on_signals(),
            once=args.once,
            drained=drained,
        )
        last: object = DateCursor(path.with_name(path.stem + "-qido.json")).load()[0]
    else:
        feed = OrthancChanges(
            args.orthanc_url or orthanc_rest_url(source.base_url),
            make_session(settings.dicomweb),
            timeout_s=settings.dicomweb.timeout_s,
        )

        def deliver_uids(uids: list[str]) -> None:
            # None: deleted since the change was logged
            refs = [ref for ref in (source.ref_for_uid(uid) for uid in uids) if ref is not None]
            if refs:
                deliver(refs)

        stats = follow(
            feed,
            Cursor(path),
            deliver_uids,
            interval_s=args.interval,
            page_size=settings.dicomweb.page_size,
            stop=_stop_on_signals(),
            once=args.once,
            drained=drained,
        )
        last = stats.last
    if running_pass is not None and args.once:
        running_pass.finish()
    elif running_pass is not None and running_pass.running:
        # told to stop: not hours more for a listing; the next start's pass comes at its interval
        log.warning("watch: stopped during a reconcile pass of %s; it is left unfinished", args.collection)
    # The loop is over and its cursor saved: a further signal ends the process by the signal. The
    # stop's handler would raise a KeyboardInterrupt that the interpreter's exit swallows (a
    # Ctrl-C burst then ended in a traceback and exit 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    summary = {
        "collection": args.collection,
        "delivered": stats.delivered,
        "last": last,
        "reconciled": reconciled,
    }
    line = (
        json.dumps(summary)
        if args.json
        else f"watch: {stats.delivered} instances delivered, cursor at {last}, {reconciled} reconcile passes"
    )
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return 0


@dataclass
class _PassFound:
    """What a reconcile pass of the watcher found: the instances listed, those the feed missed
    (to index), how many gone ones it deleted, and why it stopped short, if it did."""

    listed: int = 0
    missed: list[ObjectRef] = field(default_factory=list)
    deleted: int = 0
    error: RadsearchError | None = None


def _reconcile_failed(args: argparse.Namespace, exc: Exception) -> None:
    """A reconcile pass that could not run, or whose deletions the guard refused: said, and the
    watcher goes on (the next pass in ``--reconcile-every``)."""
    hint = (
        " (to delete them once: radsearch ingest <the PACS> --collection NAME --prune --force)"
        if isinstance(exc, DeletionRefused)
        else ""
    )
    log.warning(
        "watch reconcile of %s: %s%s; the next in %.0f s", args.collection, exc, hint, args.reconcile_every
    )


def _cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    """Index new instances here, in the store this process owns."""
    from concurrent.futures import ThreadPoolExecutor

    from ingest.inline import IngestOptions, build_context
    from ingest.pipeline import process_batch
    from ingest.planner import plan_batches
    from ingest.prune import check_deletions, prune_gone, source_diffs
    from ingest.sources.factory import open_dicomweb
    from ingest.watch import BackgroundPass
    from radsearch.services import ensure_collection, open_catalog

    source = open_dicomweb(args.source, settings)
    with (
        open_catalog(settings, owner="watch") as catalog,
        ThreadPoolExecutor(max_workers=settings.ingest.decode_workers, thread_name_prefix="watch") as pool,
    ):
        ensure_collection(catalog, args.collection, args.encoder)
        ctx = build_context(source, catalog, [args.collection], IngestOptions(), settings)

        def deliver(refs: list[ObjectRef]) -> None:
            report = process_batch(ctx, refs, pool)
            if report.frames_indexed:
                catalog.index.optimize(args.collection)
            log.info(
                "watch batch objects=%d frames=%d failed=%d quarantined=%d",
                report.objects,
                report.frames_indexed,
                len(report.failed),
                len(report.quarantined),
            )

        def list_and_diff() -> _PassFound:
            # on the pass's thread, with a connection of its own: the feed's goes on meanwhile
            pacs = open_dicomweb(args.source, settings)
            found = _PassFound()
            try:
                listing = {ref.key: ref for ref in pacs.list()}
                diffs = source_diffs(
                    catalog.index,
                    [args.collection],
                    pacs,
                    listing,
                    max_frames=settings.ingest.max_frames_per_object,
                    prune=True,
                )
                missed = sorted({key for diff in diffs for key in (*diff.added, *diff.changed)})
                found.listed, found.missed = len(listing), [listing[key] for key in missed]
                check_deletions(diffs, max_fraction=args.max_delete_fraction, force=False)
                found.deleted = len(prune_gone(catalog.index, pacs, diffs))
            except (SourceError, DeletionRefused) as exc:
                found.error = exc
            finally:
                pacs.close()
            return found

        def index_missed(found: _PassFound) -> None:
            # what the feed missed is indexed here, whatever the guard said of the deletions
            for batch in plan_batches(found.missed, settings.ingest.batch_size):
                deliver(batch)
            if found.error is not None:
                _reconcile_failed(args, found.error)
                return
            log.info(
                "watch reconcile of %s: %d listed, %d missed and indexed, %d deleted",
                args.collection,
                found.listed,
                len(found.missed),
                found.deleted,
            )

        running_pass = BackgroundPass(list_and_diff, index_missed, name="watch-reconcile")

        try:
            return _follow(args, settings, source, deliver, running_pass.start, running_pass)
        finally:
            source.close()


def _cmd_watch_remote(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """Send new instances to the radsearch server at ``url`` by STOW-RS (role ingest)."""
    import httpx

    from core.api_client import ApiClient
    from ingest.sources.factory import open_dicomweb
    from ingest.sources.multipart import encode_multipart

    source = open_dicomweb(args.source, settings)
    with ApiClient.from_settings(url, settings) as api:
        api.ensure_collection(args.collection, {"encoder": args.encoder or "baseline"})
    headers = {"X-API-Key": settings.api_key.get_secret_value()} if settings.api_key else {}
    stow = f"{url.rstrip('/')}/v1/dicomweb/studies"

    def deliver(refs: list[ObjectRef]) -> None:
        parts = []
        for ref in refs:
            try:
                parts.append(source.fetch(ref.key))
            except BadInput:
                continue
        if not parts:
            return
        body, content_type = encode_multipart(parts)
        try:
            response = httpx.post(
                stow,
                params={"collection": args.collection},
                content=body,
                headers={**headers, "Content-Type": content_type},
                timeout=300,
            )
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot reach the radsearch server at {url}: {type(exc).__name__}") from exc
        # 409: none of the instances could be indexed (quarantined, undecodable): delivered all the same.
        if response.status_code >= 400 and response.status_code != 409:
            if response.status_code in (401, 403, 404):
                raise ConfigError(f"the radsearch server at {url} refused STOW-RS ({response.status_code})")
            raise SourceError(f"the radsearch server at {url} answered {response.status_code}")
        log.info("watch batch sent=%d status=%d", len(parts), response.status_code)

    def reconcile() -> bool:
        # The server's own pass (an owner job: skip what is indexed, prune under the guard); it
        # answers 400 where the watched PACS is not its configured one (dicomweb.url).
        body = {
            "executor": "owner",
            "source": args.source,
            "collections": [args.collection],
            "encoder": args.encoder,
            "prune": True,
            "max_delete_fraction": args.max_delete_fraction,
        }
        try:
            with ApiClient.from_settings(url, settings) as api:
                job_id = api.request("POST", "/v1/ingest-jobs", json=body)["id"]
        except RadsearchError as exc:
            _reconcile_failed(args, exc)
            return True
        log.info("watch reconcile of %s: job %s on the server", args.collection, job_id)
        return True

    try:
        return _follow(args, settings, source, deliver, reconcile)
    finally:
        source.close()
