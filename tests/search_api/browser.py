"""A served app (uvicorn on a free port, in a thread) and Debian's chromium, for browser tests.

Without chromium a browser test is skipped on a developer's machine but fails in CI (``CI`` set):
``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.served import Served

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
