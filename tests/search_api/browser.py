"""A served app (uvicorn on a free port, in a thread) and Debian's chromium, for browser tests.

Without chromium a browser test is skipped on a developer's machine but fails in CI (``CI`` set):
``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI

from tests.conftest import free_port

__all__ = ["OFFLINE_ARGS", "TIMEOUT_MS", "Served", "chromium"]

# Generous for a loaded CI machine: each step takes well under a second on an idle one.
TIMEOUT_MS = 30_000
# No name resolves: the network is off for the browser itself, not only for the page.
OFFLINE_ARGS = ["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


class Served:
    """``app`` served by uvicorn on 127.0.0.1 while the context is open."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
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
        self.thread.join(timeout=10)
