"""`RouteTable`: the route a request scope matches, cached per (method, root path, path)."""

from __future__ import annotations

from fastapi import FastAPI

from search_api.routing import RouteInfo, RouteTable, iter_routes


def _scan(app: FastAPI, scope: dict[str, object]) -> RouteInfo | None:
    return next((info for info in iter_routes(app.routes) if info.matches(scope)), None)


def _scope(method: str, path: str) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def test_route_table_matches_like_a_fresh_scan_and_caches_per_method_and_path() -> None:
    app = FastAPI()

    @app.get("/items/{name}")
    def read(name: str) -> str:
        return name

    @app.post("/items/{name}/search")
    def search(name: str) -> str:
        return name

    table = RouteTable(app.routes)
    cases = [
        ("GET", "/items/a"),
        ("POST", "/items/a/search"),
        ("GET", "/items/a/search"),  # the path exists, the method does not: no full match
        ("GET", "/nothing"),
        ("GET", "/items/b"),
    ]
    for _ in range(2):  # the second round is answered from the cache
        for method, path in cases:
            expected = _scan(app, _scope(method, path))
            found = table.match(_scope(method, path))
            assert (found.path if found else None) == (expected.path if expected else None)
    assert table.match(_scope("GET", "/items/a")).path == "/items/{name}"  # type: ignore[union-attr]
    assert table.match(_scope("GET", "/items/a/search")) is None
    assert len(table._matched) == len(cases)


def test_route_table_cache_is_bounded() -> None:
    app = FastAPI()

    @app.get("/items/{name}")
    def read(name: str) -> str:
        return name

    table = RouteTable(app.routes)
    for i in range(RouteTable._CACHE_MAX + 10):
        assert table.match(_scope("GET", f"/items/{i}")) is not None
    assert len(table._matched) <= RouteTable._CACHE_MAX
