"""The bucket-notification webhook: MinIO (or S3-compatible) object events → worker tasks."""

from __future__ import annotations

import hmac
import json
from typing import Annotated

import redis
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel

from core.config import Settings
from search_api.deps import worker_gateway
from search_api.errors import ApiError, error_responses
from search_api.offload import in_thread
from search_api.security import public
from workers.client import BrokerUnavailable, dispatch_events, parse_s3_event

# Authenticated by its own webhook token (below), not by API keys.
router = APIRouter(
    prefix="/v1/events", tags=["events"], dependencies=[public("bucket webhook, own bearer token")]
)

# A MinIO notification carries one record; a generous cap for batched senders.
_MAX_EVENT_BYTES = 1024 * 1024


class EventsAccepted(BaseModel):
    received: int
    enqueued: int
    deletions: int
    ignored: int
    jobs: list[str]


def _check_token(settings: Settings, authorization: str | None) -> None:
    configured = settings.events.webhook_token
    if configured is None or not configured.get_secret_value():
        raise ApiError(503, "webhook_not_configured", "event webhook not configured")
    scheme, _, presented = (authorization or "").partition(" ")
    expected = configured.get_secret_value().encode()
    # compare_digest: the time taken must not reveal how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
        raise ApiError(
            401,
            "unauthorized",
            "invalid or missing token",
            field="authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.post("/s3", responses=error_responses(400, 401, 413, 503))
async def create_s3_events(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> EventsAccepted:
    """Receive object created/removed notifications; enqueue indexing or deletion per subscription."""
    settings: Settings = request.app.state.settings
    _check_token(settings, authorization)
    body = await request.body()
    if len(body) > _MAX_EVENT_BYTES:
        raise ApiError(413, "body_too_large", "event body too large")
    try:
        events = parse_s3_event(json.loads(body or b"{}"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_event", f"malformed event: {exc}") from exc
    gateway = worker_gateway(request)
    try:
        report = await in_thread(dispatch_events, settings, gateway.store, gateway.app, events)
    except (BrokerUnavailable, redis.exceptions.RedisError) as exc:
        # Non-2xx: MinIO keeps the event in its queue dir and delivers it again.
        raise ApiError(503, "queue_unavailable", "job queue unavailable") from exc
    return EventsAccepted(**report.to_dict())
