"""UIDs and viewer links for the ``clinician`` role, from the data dir's encrypted
re-identification table; every re-identified hit is written to the audit log (who, when, which
hashes). Every other role sees keyed hashes only."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote

from fastapi import Request

from core.config import Settings
from search_api.offload import in_thread
from search_api.schemas import SearchGroup, SearchHit
from search_api.security import AUDIT_LOGGER, Principal, Role

__all__ = ["may_reidentify", "reidentify", "reidentify_response"]

audit_log = logging.getLogger(AUDIT_LOGGER)


def may_reidentify(principal: Principal | None) -> bool:
    """Whether hits for this caller carry UIDs (the ``clinician`` role, never open mode)."""
    return principal is not None and Role.CLINICIAN in principal.roles


def reidentify(settings: Settings, principal: Principal, collection: str, hits: Iterable[SearchHit]) -> None:
    """Fill ``study_uid``, ``series_uid``, ``instance_uid`` and ``viewer_url`` of the hits the
    table holds, in place, for a clinician; one audit line per re-identified point (a hit shown
    both in ``hits`` and in a group is one)."""
    if not may_reidentify(principal):
        return
    from ingest.reid import open_reid_table

    table = open_reid_table(settings)
    if table is None:
        return
    hits = list(hits)
    hashes = [hit.payload.instance_hash for hit in hits]
    found = table.look_up(h for h in hashes if isinstance(h, str))
    viewer = settings.dicomweb.viewer
    audited: set[str] = set()
    for hit, instance_hash in zip(hits, hashes, strict=True):
        uids = found.get(instance_hash) if isinstance(instance_hash, str) else None
        if uids is None:
            continue
        hit.study_uid, hit.series_uid, hit.instance_uid = uids.study_uid, uids.series_uid, uids.instance_uid
        if viewer:
            hit.viewer_url = settings.dicomweb.viewer_template.format(
                viewer=viewer.rstrip("/"),
                study_uid=quote(uids.study_uid),
                series_uid=quote(uids.series_uid),
                instance_uid=quote(uids.instance_uid),
            )
        if hit.id in audited:
            continue
        audited.add(hit.id)
        audit_log.info(
            "reidentify who=%s role=%s collection=%s instance_hash=%s study_hash=%s at=%s",
            principal.name,
            principal.role_label,
            collection,
            instance_hash,
            hit.payload.study_hash,
            datetime.now(UTC).isoformat(timespec="seconds"),
        )


class _Answer(Protocol):
    hits: list[SearchHit]
    groups: list[SearchGroup] | None


async def reidentify_response(request: Request, collection: str, answer: _Answer) -> None:
    """`reidentify` the hits of a search answer (its ``hits`` and its groups' hits) for a
    clinician caller; nothing for any other caller."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None or not may_reidentify(principal):
        return
    hits = [*answer.hits, *(hit for group in answer.groups or [] for hit in group.hits)]
    await in_thread(reidentify, request.app.state.settings, principal, collection, hits)
