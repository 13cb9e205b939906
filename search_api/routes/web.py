from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response

from search_api.errors import ApiError, error_responses
from search_api.security import public

# Static files only; every call the page makes goes through the protected API.
router = APIRouter(tags=["web"], dependencies=[public("static page, no data")])

# The page's files: name → media type. Nothing else under static/ is served.
_ASSETS = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}


@cache
def _read(name: str) -> str:
    return files("search_api").joinpath("static", name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def read_page() -> HTMLResponse:
    """The search page: upload an image, see similar images grouped, compare, refine."""
    return HTMLResponse(_read("index.html"))


@router.get(
    "/static/{asset}",
    response_class=Response,
    responses={200: {"content": {"text/javascript": {}, "text/css": {}}}, **error_responses(404)},
)
async def read_page_asset(asset: str = Path(max_length=32)) -> Response:
    """The page's script and style sheet (plain files, no build step, no CDN)."""
    media_type = _ASSETS.get(asset)
    if media_type is None:
        raise ApiError(404, "not_found", "no such page asset")
    return Response(_read(asset), media_type=media_type, headers={"Cache-Control": "no-cache"})
