"""Command-line parts for PACS sources (``dicomweb+http(s)://``): the ``ingest`` selectors and
``radsearch watch``."""

from __future__ import annotations

import argparse

from core.errors import ConfigError

__all__ = ["add_selector_options", "apply_selectors"]


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
