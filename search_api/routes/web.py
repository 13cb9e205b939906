from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from search_api.security import public

# Static HTML only; every call the page makes goes through the protected API.
router = APIRouter(tags=["web"], dependencies=[public("static page, no data")])


@cache
def _index_html() -> str:
    return files("search_api").joinpath("static/index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def read_page() -> HTMLResponse:
    """The search page: drop an image, see similar images."""
    return HTMLResponse(_index_html())
