"""`search_api.http_protocol`: a response's head and body leave in one write, and nothing written
is lost, reordered or sent after a close."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from search_api.http_protocol import CoalescedWrites
from tests.conftest import free_port, wait_ready


class _RecordingTransport:
    """The transport calls `CoalescedWrites` makes, in order (a stand-in for a socket's)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


def test_writes_of_one_loop_step_go_out_as_one_at_its_end() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        transport = _RecordingTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        writes.write(memoryview(b"{}"))
        assert transport.calls == [] and writes.get_write_buffer_size() == 40
        await asyncio.sleep(0)  # the step ends
        writes.write(b"next")
        await asyncio.sleep(0)
        assert writes.get_extra_info("peername") == "extra peername"  # the rest is the transport's
        return transport.calls

    calls = asyncio.run(scenario())
    assert calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"), ("write", b"next")]


def test_a_close_or_end_of_writing_sends_what_is_held_first_and_an_abort_drops_it() -> None:
    async def scenario(end: str) -> list[tuple[str, Any]]:
        transport = _RecordingTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 413 \r\nconnection: close\r\n\r\n")
        writes.writelines([b"{", b"}"])
        getattr(writes, end)()
        await asyncio.sleep(0)  # the step's own flush finds nothing left to write
        return transport.calls

    head = b"HTTP/1.1 413 \r\nconnection: close\r\n\r\n{}"
    assert asyncio.run(scenario("close")) == [("write", head), ("close", None)]
    assert asyncio.run(scenario("write_eof")) == [("write", head), ("write_eof", None)]
    assert asyncio.run(scenario("abort")) == [("abort", None)]


def test_nothing_is_written_to_a_transport_that_is_closing() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        transport = _RecordingTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"late")
        transport.closing = True  # the peer went away meanwhile
        await asyncio.sleep(0)
        return transport.calls

    assert asyncio.run(scenario()) == []


def _data_segments_in(conn: socket.socket) -> int:
    """Segments with data this socket has received (Linux ``tcp_info.tcpi_data_segs_in``)."""
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= 156, "this kernel's tcp_info has no data_segs_in"
    (segments,) = struct.unpack_from("I", info, 152)
    return int(segments)


def test_the_server_sends_each_response_in_one_segment_and_keeps_the_connection(tmp_path: Path) -> None:
    """`radsearch serve` writes a response's head and body together: each reply on a keep-alive
    connection arrives as one TCP segment (uvicorn alone sends two), whole."""
    port = free_port()
    env = {"RADSEARCH_DATA_DIR": str(tmp_path / "data"), "PATH": str(Path(sys.executable).parent)}
    server = subprocess.Popen(
        [sys.executable, "-m", "radsearch", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc=server, timeout_s=60)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            for _ in range(3):
                before = _data_segments_in(conn)
                conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                time.sleep(0.2)  # a second write would have landed by now
                reply = conn.recv(65536)
                head, _, body = reply.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200") and body == b'{"status":"ok"}', reply
                assert _data_segments_in(conn) - before == 1
    finally:
        server.terminate()
        server.wait(timeout=30)
