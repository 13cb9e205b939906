"""``POST /v1/render``: an uploaded DICOM (or PNG/JPEG) as a PNG of one frame in a chosen window,
for the viewer's query panel; the frame a search by the same upload embeds unless told otherwise."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import Field

from core.errors import BadInput, DecodeError, TooLarge, UnsupportedFormat
from search_api import rendering
from search_api.deps import InferenceLimiterDep, SettingsDep
from search_api.errors import ObjectQuarantined, UnknownField, error_responses
from search_api.offload import in_inference_thread
from search_api.results import InvalidQuery
from search_api.security import Role, require_role
from search_api.uploads import FORM_NULL, check_form_fields, read_upload, upload_name

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[require_role(Role.READER)])

_FORM_FIELDS = ("file", "window", "frame", "size")

_PNG: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "A PNG of the frame; X-Radsearch-Frame: the file's frame index, "
        "X-Radsearch-Frames: how many frames were decoded",
    },
    **error_responses(
        InvalidQuery, UnknownField, BadInput, DecodeError, TooLarge, UnsupportedFormat, ObjectQuarantined
    ),
}


@router.post("/render", response_class=Response, responses=_PNG)
async def render_upload(
    request: Request,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image")],
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
    window: Annotated[str, Form(max_length=40, description=rendering.WINDOW_DESCRIPTION)] = "auto",
    frame: Annotated[
        Annotated[int, Field(ge=0, le=100_000)] | None,
        FORM_NULL,
        Form(description="the file's frame index; the middle one if absent"),
    ] = None,
    size: Annotated[
        Annotated[int, Field(ge=16, le=2048)] | None,
        FORM_NULL,
        Form(description="longest side; native size (the ROI's coordinates) if absent"),
    ] = None,
) -> Response:
    """Render an upload's frame from its pixels only (never overlays); a DICOM flagged for
    burned-in annotation is refused (410). Nothing is stored."""
    await check_form_fields(request, _FORM_FIELDS)
    parsed = rendering.parse_window(window)
    name = upload_name(file.filename)
    data = await read_upload(file, settings.api.max_upload_bytes, name)
    rendered = await in_inference_thread(
        limiter,
        rendering.render_upload,
        settings=settings,
        data=data,
        filename=name,
        frame=frame,
        window=parsed,
        size=size,
    )
    return Response(
        content=rendered.png,
        media_type="image/png",
        headers={
            "Cache-Control": "no-store",
            "X-Radsearch-Frame": str(rendered.frame),
            "X-Radsearch-Frames": str(rendered.frames),
        },
    )
