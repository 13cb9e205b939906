"""A small HTTP client of a radsearch server's API, for its own clients: the command line when a
server owns the store, and the workers that send their batches to it.

Answers come back as parsed JSON; error answers come back as radsearch's own typed errors, so a
caller handles a remote failure exactly like a local one (the API maps the same tree to HTTP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from core.errors import (
    AccessRefused,
    CollectionNotFound,
    ConfigError,
    RadsearchError,
    ServerGone,
    ServerUnavailable,
    StoreFull,
    WeightsUnavailable,
)

if TYPE_CHECKING:
    from core.config import Settings

__all__ = ["ApiClient", "error_for"]

logger = logging.getLogger(__name__)

# A server that was just started has advertised its URL before it listens: wait that long for it.
_CONNECT_GRACE_S = 15.0


def error_for(status: int, detail: str, url: str) -> RadsearchError:
    """The typed error an error answer stands for (the inverse of the API's own mapping)."""
    if status == 404:
        return CollectionNotFound(detail)
    if status == 507:
        return StoreFull(detail)
    if status == 424:
        return WeightsUnavailable(detail)
    if status in (401, 403):
        return AccessRefused(
            f"the radsearch server at {url} refused the request ({status}: {detail}); "
            "give a key with the right role in RADSEARCH_API_KEY",
            detail=f"{status}: {detail}",
        )
    if status in (502, 503, 504):
        return ServerUnavailable(f"the radsearch server at {url} is unavailable ({status}: {detail})")
    if status >= 500:
        return RadsearchError(f"the radsearch server at {url} failed ({status}): {detail}")
    return ConfigError(detail)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])  # the API's error model: {"error": {"code", "message", "field"}}
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's validation errors: name the fields, never echo input
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg', '')}"
            for item in detail
            if isinstance(item, dict)
        )
    return str(detail) if detail is not None else response.reason_phrase


def _store_restart_retry_s(response: httpx.Response) -> float | None:
    """The seconds to wait before sending again a request the server answered 503
    ``store_unavailable`` with ``Retry-After``; None for any other answer."""
    if response.status_code != 503 or "retry-after" not in response.headers:
        return None
    try:
        code = response.json()["error"]["code"]
        return float(response.headers["retry-after"]) if code == "store_unavailable" else None
    except (ValueError, KeyError, TypeError):
        return None


class ApiClient:
    """Requests to one radsearch server, with its API key when one is given.

    ``store_restart_wait_s``: how long a request answered 503 ``store_unavailable`` (the server is
    replacing its store process, seconds) is sent again, after each answer's ``Retry-After``; 0
    raises `ServerUnavailable` at once (workers: Celery retries the task).

    ``serves``: whether the server is still there to wait for, asked while it does not accept
    connections (a data dir's owner that advertised its URL may still be starting); once it says
    no before the server answered anything, a request raises `ServerGone` at once.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float | None = 120.0,
        store_restart_wait_s: float = 0.0,
        serves: Callable[[], bool] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self._store_restart_wait_s = store_restart_wait_s
        self._serves = serves
        self._answered = False

    @classmethod
    def from_settings(
        cls,
        url: str,
        settings: Settings,
        *,
        timeout_s: float | None = 120.0,
        store_restart_wait_s: float = 0.0,
        serves: Callable[[], bool] | None = None,
    ) -> ApiClient:
        """A client of ``url`` with the key in ``settings`` (``RADSEARCH_API_KEY``), if any."""
        api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        return cls(
            url,
            api_key=api_key,
            timeout_s=timeout_s,
            store_restart_wait_s=store_restart_wait_s,
            serves=serves,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; the parsed JSON answer (None when empty), or the typed error."""
        restart_deadline = time.monotonic() + self._store_restart_wait_s
        while True:
            response = self._send(method, path, **kwargs)
            retry_in = _store_restart_retry_s(response)
            if retry_in is None or time.monotonic() + retry_in > restart_deadline:
                break
            logger.warning(
                "the radsearch server at %s is replacing its store process; trying again in %.0f s",
                self.url,
                retry_in,
            )
            time.sleep(retry_in)
        if response.status_code >= 400:
            raise error_for(response.status_code, _detail(response), self.url)
        if not response.content:
            return None
        return response.json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + _CONNECT_GRACE_S
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                if not self._answered and self._serves is not None and not self._serves():
                    raise ServerGone(f"the radsearch server at {self.url} has stopped") from exc
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"cannot reach the radsearch server at {self.url}") from exc
                time.sleep(0.2)
            except httpx.HTTPError as exc:
                if self._serves is not None and not self._serves():
                    raise ServerUnavailable(
                        f"the radsearch server at {self.url} stopped before it answered "
                        f"({type(exc).__name__}); run the command again: it runs here while no server "
                        "owns the data dir"
                    ) from exc
                raise ServerUnavailable(
                    f"the radsearch server at {self.url} did not answer: {type(exc).__name__}"
                ) from exc
            else:
                self._answered = True
                return response

    def ensure_collection(self, name: str, spec: dict[str, Any]) -> None:
        """Create the collection ``name`` (``POST /v1/collections`` with ``spec``: encoder,
        weights...) unless it already exists. Looked up first: creating one loads its encoder. A
        refused creation stands unless the collection was created meanwhile (409). A key that may
        not create one (role ingest) gets `AccessRefused` saying the collection is missing."""
        path = f"/v1/collections/{quote(name, safe='')}"
        try:
            self.request("GET", path)
            return
        except CollectionNotFound:
            pass
        try:
            self.request("POST", "/v1/collections", json={"name": name, **spec})
        except AccessRefused as exc:
            raise AccessRefused(
                f"collection {name!r} does not exist on the radsearch server at {self.url}, and "
                f"this key may not create it ({exc.detail}); create it with an admin key "
                f"(radsearch collections create {name} --encoder ...) or pick an existing one",
                detail=exc.detail,
            ) from None
        except ConfigError as exc:
            try:
                self.request("GET", path)
            except CollectionNotFound:
                raise exc from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
