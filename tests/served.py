"""An app served by a real uvicorn on 127.0.0.1 (in a thread of the test process), for tests
whose other side is a real client: a browser, or a PACS calling back."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from tests.conftest import free_port

__all__ = ["Served"]


class Served:
    """``app`` served by uvicorn on 127.0.0.1 while the context is open."""

    def __init__(self, app: FastAPI, *, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
