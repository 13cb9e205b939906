"""`ApiClient` when the server goes away in the middle of a request (a `kill -9` of `radsearch
serve` while a command waits for its answer)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from core.api_client import ApiClient
from core.errors import ServerUnavailable


@pytest.fixture
def hangs_up() -> Iterator[str]:
    """A server that reads each request and closes the connection without an answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()


@pytest.mark.parametrize(
    ("still_owner", "says"),
    [
        (True, "did not answer: RemoteProtocolError"),
        # found in the walkthrough: after `kill -9` of the server, "did not answer" left the
        # operator to guess that the command would now run here
        (False, "stopped before it answered (RemoteProtocolError); run the command again: it runs here"),
    ],
)
def test_a_server_that_hangs_up_is_named_and_the_way_on_said(
    hangs_up: str, still_owner: bool, says: str
) -> None:
    with ApiClient(hangs_up, serves=lambda: still_owner) as api, pytest.raises(ServerUnavailable) as failed:
        api.request("GET", "/v1/collections")
    assert says in str(failed.value) and hangs_up in str(failed.value)
