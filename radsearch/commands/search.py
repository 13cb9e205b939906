"""``radsearch search``: the images most similar to an image file, or to a text (encoders with a
text tower), here or through a server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import ConfigError
from core.payload import FILTER_FIELDS
from radsearch.commands import remote
from radsearch.commands.common import EXIT_OK, print_json

__all__ = ["add_search_command", "filter_mapping", "print_hits"]


def print_hits(
    hits: Sequence[Mapping[str, Any]],
    *,
    as_json: bool,
    warnings: Sequence[Mapping[str, Any]] = (),
    groups: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Search hits, ``{"id", "score", "payload"}`` each, as a table or as ``{"hits": [...],
    "warnings": [...]}`` (with ``groups``, ``{"key", "hits"}`` each: a table per group, and
    ``"groups"`` in the JSON); each filter warning (``{"field", "value", "message",
    "suggestions"}``) also goes to stderr, one line each."""
    for warning in warnings:
        print(f"radsearch: warning: {warning['message']}", file=sys.stderr)
    if as_json:
        answer: dict[str, Any] = {"hits": _hit_fields(hits)}
        if groups is not None:
            answer["groups"] = [{"key": g["key"], "hits": _hit_fields(g["hits"])} for g in groups]
        print_json({**answer, "warnings": [dict(w) for w in warnings]})
        return
    if not hits and not groups:
        # a header over nothing reads like a failure to print; say what happened
        print("no hits" + (" (see the warning above)" if warnings else ""))
        return
    if groups is None:
        _print_table(hits)
        return
    for number, group in enumerate(groups, start=1):
        print(f"group {number}: {group['key']}")
        _print_table(group["hits"])


def _hit_fields(hits: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": h["id"], "score": h["score"], "payload": h["payload"]} for h in hits]


def _print_table(hits: Sequence[Mapping[str, Any]]) -> None:
    print(f"{'rank':>4}  {'score':>6}  {'modality':<8} {'anatomy':<10} {'pathology':<14} key")
    for rank, hit in enumerate(hits, start=1):
        p = hit["payload"]
        print(
            f"{rank:>4}  {hit['score']:6.3f}  {p.get('modality', '-'):<8} {p.get('anatomy', '-'):<10} "
            f"{','.join(p.get('pathology', [])) or '-':<14} {p.get('key')}#{p.get('frame', 0)}"
        )


def filter_mapping(args: argparse.Namespace) -> dict[str, list[str]]:
    """The search filter the ``--modality`` ... options give (any-of within a field)."""
    return {name: list(getattr(args, name)) for name in FILTER_FIELDS if getattr(args, name)}


def _exclude(args: argparse.Namespace) -> dict[str, bool] | None:
    """``--exclude same-patient`` ... as the API's ``exclude`` object."""
    if not args.exclude:
        return None
    return {choice.replace("-", "_"): True for choice in args.exclude}


def _roi(text: str) -> dict[str, int]:
    """``--roi X,Y,WIDTH,HEIGHT`` as the API's ``roi`` object."""
    parts = text.split(",")
    if len(parts) != 4 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(
            "give X,Y,WIDTH,HEIGHT in pixels of the query frame, e.g. 10,20,128,96"
        )
    x, y, width, height = (int(part) for part in parts)
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError("WIDTH and HEIGHT must be at least 1")
    from search_api.schemas import ROI_MAX  # here, not at start-up: only a --roi needs it

    if max(x, y, width, height) > ROI_MAX:
        raise argparse.ArgumentTypeError(f"X, Y, WIDTH and HEIGHT are at most {ROI_MAX} pixels")
    return {"x": x, "y": y, "width": width, "height": height}


def _query_text(text: str) -> str:
    """``--text``: what the API's ``text`` takes (1 to `TEXT_MAX` characters)."""
    from search_api.schemas import TEXT_MAX  # here, not at start-up: only a --text needs it

    if not text.strip():
        raise argparse.ArgumentTypeError("give the words to search for")
    if len(text) > TEXT_MAX:
        raise argparse.ArgumentTypeError(f"at most {TEXT_MAX} characters, not {len(text)}")
    return text


def _check_query(args: argparse.Namespace) -> None:
    """`ConfigError` unless one query is given, an image or ``--text``, with the options it takes."""
    if (args.image is None) == (args.text is None):
        raise ConfigError("search by an image file or by --text: give one of them")
    if args.text is not None:
        given = [flag for flag, value in (("--roi", args.roi), ("--exclude", args.exclude)) if value]
        if given:
            verb = "go" if len(given) > 1 else "goes"
            raise ConfigError(f"{' and '.join(given)} {verb} with a query image, not with --text")


def _cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import (
        check_limit,
        group_rows,
        hit_rows,
        open_catalog,
        read_query_image,
        search_image,
        search_text,
        search_warnings,
    )

    _check_query(args)
    check_limit(args.k, settings)
    search_filter = filter_mapping(args)
    shape = {
        "filter": search_filter,
        "limit": args.k,
        "group_by": args.group_by,
        "group_size": args.group_size,
    }
    query_image = read_query_image(args.image, settings) if args.image is not None else None
    with open_catalog(settings) as catalog:
        if query_image is None:
            found = search_text(catalog, args.collection, text=args.text, **shape)
        else:
            filename, data = query_image
            found = search_image(
                catalog,
                settings,
                args.collection,
                data=data,
                filename=filename,
                exclude=_exclude(args),
                roi=args.roi,
                **shape,
            )
        warnings = search_warnings(catalog, args.collection, search_filter, found)
    print_hits(hit_rows(found.hits), as_json=args.json, warnings=warnings, groups=group_rows(found.groups))
    return EXIT_OK


def _remote_search(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """The image is uploaded to ``POST /v1/collections/{name}/search/image``; a text goes to
    ``POST /v1/collections/{name}/search``."""
    _check_query(args)
    from radsearch.services import check_limit

    check_limit(args.k, settings)
    answer = (
        _remote_text_search(args, settings, url) if args.text is not None else _upload(args, settings, url)
    )
    print_hits(
        answer["hits"], as_json=args.json, warnings=answer.get("warnings", []), groups=answer.get("groups")
    )
    return EXIT_OK


def _remote_text_search(args: argparse.Namespace, settings: Settings, url: str) -> Any:
    body: dict[str, Any] = {"text": args.text, "limit": args.k, "filter": filter_mapping(args) or None}
    if args.group_by is not None:
        body.update(group_by=args.group_by, group_size=args.group_size)
    with remote.client(settings, url) as api:
        return api.request("POST", f"/v1/collections/{remote.segment(args.collection)}/search", json=body)


def _upload(args: argparse.Namespace, settings: Settings, url: str) -> Any:
    from radsearch.services import open_query_image

    form = {"limit": str(args.k)}
    mapping = filter_mapping(args)
    if mapping:
        form["filter"] = json.dumps(mapping)
    if (exclude := _exclude(args)) is not None:
        form["exclude"] = json.dumps(exclude)
    if args.roi is not None:
        form["roi"] = json.dumps(args.roi)
    if args.group_by is not None:
        form.update(group_by=args.group_by, group_size=str(args.group_size))
    # The server names, size-checks and decodes the upload, with the words of the direct mode.
    with open_query_image(args.image) as handle, remote.client(settings, url) as api:
        return api.request(
            "POST",
            f"/v1/collections/{remote.segment(args.collection)}/search/image",
            files={"file": (args.image.name, handle, "application/octet-stream")},
            data=form,
        )


def add_search_command(sub: Any) -> None:
    """Register ``radsearch search`` on the ``radsearch`` subparsers."""
    search = sub.add_parser(
        "search", help="find the images most similar to an image file, or to a text (--text)"
    )
    search.add_argument("image", type=Path, nargs="?", help="a DICOM, PNG or JPEG file")
    search.add_argument(
        "--text",
        type=_query_text,
        help="search by these words instead of an image (encoders with a text tower: biomedclip, "
        "clip-vit-b16, clip-vit-l14)",
    )
    search.add_argument("--collection", required=True)
    for name in FILTER_FIELDS:
        search.add_argument(f"--{name}", action="append", metavar=name.upper(), help=f"only this {name}")
    search.add_argument(
        "-k", "--limit", dest="k", type=int, default=10, help="number of hits (with --group-by: of groups)"
    )
    search.add_argument(
        "--exclude",
        action="append",
        choices=("same-patient", "same-study"),
        help="leave out the query DICOM's own patient or study (repeat for both)",
    )
    search.add_argument(
        "--group-by",
        choices=("object", "series", "study"),
        help="one group of hits per object, series or study, best group first",
    )
    search.add_argument("--group-size", type=int, default=3, help="hits per group (default 3)")
    search.add_argument(
        "--roi", type=_roi, metavar="X,Y,WIDTH,HEIGHT", help="embed only this region of the query frame"
    )
    search.add_argument("--json", action="store_true")
    search.set_defaults(handler=_cmd_search, remote_handler=_remote_search)
