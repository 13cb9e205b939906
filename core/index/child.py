"""An `EdgeIndex` in a child process of its own, called over a Unix socket (`IndexProcess`).

The parent calls from threads or awaits on an event loop (`IndexProcess.call_async`), and opens
one connection per concurrent caller and keeps it for reuse (one awaited on a loop stays on that
loop, `_LoopConnection`); the child answers
their reads one at a time and runs every other call on a thread of its own (`_READS`), exits when
the parent closes the first connection (its lifeline) or dies, and then closes its shards. The
arguments and results are pickled. Errors raised by the index are re-raised in the parent as they
are; an error that cannot cross (not picklable) becomes an `IndexStoreError`.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import pickle
import queue
import selectors
import shutil
import signal
import struct
import tempfile
import threading
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from core.config import StoreSettings
from core.errors import IndexStoreError

__all__ = ["IndexProcess"]

logger = logging.getLogger(__name__)

# The calls the child answers, the VectorIndex interface and nothing else, in two kinds. Reads are
# answered by the loop itself, one at a time. Every other call (a write, an index build, a copy)
# runs on a thread of its own, so that while it waits (for the collection's write lock, or on the
# disk while a copy for a search replica is made: seconds at 1 M points) searches are answered.
_READS = frozenset(
    {
        "list_collections",
        "collection_exists",
        "collection_config",
        "search",
        "search_near_point",
        "retrieve",
        "count",
        "facet",
        "scroll_page",
        "collection_info",
        "aliases",
    }
)
_METHODS = _READS | {
    "open_collections",
    "create_collection",
    "drop_collection",
    "update_metadata",
    "upsert",
    "delete",
    "delete_by_filter",
    "overwrite_payloads",
    "register_source",
    "set_alias",
    "delete_alias",
    "optimize",
    "export_collection",
    "detach_collection",
    "attach_collection",
}
_START_TIMEOUT_S = 120.0
_PR_SET_NAME = 15  # prctl option: the calling thread's name, which for the main thread is the process's


def _crossable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an `IndexStoreError` with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return IndexStoreError(f"{type(exc).__name__}: {exc}")
    return exc


_Request = tuple[str, tuple[Any, ...], dict[str, Any]]  # (method, args, kwargs)


def _send(conn: Connection, message: Any) -> None:
    """``message`` pickled onto ``conn``: `Connection.send` without its `ForkingPickler`, which
    copies the copyreg dispatch table for every message. The messages are strings, arrays and
    plain objects, which need none of its reducers."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    """The next message `_send` put on ``conn``."""
    return pickle.loads(conn.recv_bytes())


def _receive(conn: Connection) -> _Request | None:
    """The next request on ``conn``: (method, args, kwargs); None once the connection is closed."""
    try:
        request: _Request = _recv(conn)
    except (EOFError, OSError):
        return None
    return request


def _reply(conn: Connection, index: Any, request: _Request) -> bool:
    """Run ``request`` on ``index`` and send ("ok", result) or ("err", error) on ``conn``. False
    once the connection is closed."""
    method, args, kwargs = request
    try:
        if method not in _METHODS:
            raise IndexStoreError(f"the index process does not answer {method!r}")
        reply: tuple[str, Any] = ("ok", getattr(index, method)(*args, **kwargs))
    except Exception as exc:
        reply = ("err", _crossable(exc))
    try:
        _send(conn, reply)
    except (EOFError, OSError):
        return False
    return True


def _name_process(name: str) -> None:
    """Name this process ``name`` (15 bytes at most) where ``ps``, ``top`` and the kernel's
    out-of-memory lines ("Killed process 4242 (radsearch-index)") show it, not "python"; Linux
    only, best effort."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: not Linux
        pass


def _serve(
    root: Path, store: StoreSettings, address: str, authkey: bytes, ready: Connection, role: str
) -> None:
    """The child process: open the index, listen, answer until the lifeline closes.

    One thread answers every connection's reads in turn: the engine holds the GIL anyway, and
    threads per connection would only hand it back and forth (measured: 4.7 ms of this process's
    CPU per search at 1 M points with 4 clients, engine included). Other calls run aside
    (`_READS`)."""
    from core.index.edge import EdgeIndex

    _name_process("radsearch-" + role.replace("search-replica-", "rep"))  # -index, -rep1
    # The parent ends this process (its lifeline closes). Ctrl-C, `timeout` or a service manager
    # signal the whole process group: a store that ended first would fail the searches the parent
    # still finishes, and be restarted by it as it shuts down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        index = EdgeIndex(root, store)
        listener = Listener(address, family="AF_UNIX", authkey=authkey)
    except Exception as exc:
        ready.send(("err", _crossable(exc)))
        return
    ready.send(("ok", os.getpid()))
    ready.close()
    lifeline = listener.accept()  # nothing is ever sent on it: it ends when the parent does
    # Connections to (re)join the loop: new ones, and those whose call a thread has answered.
    joining: queue.SimpleQueue[Connection] = queue.SimpleQueue()
    wake_recv, wake_send = multiprocessing.Pipe(duplex=False)
    wake_lock = threading.Lock()

    def join(conn: Connection) -> None:
        joining.put(conn)
        with wake_lock:
            wake_send.send(None)

    def accept_forever() -> None:
        while True:
            join(listener.accept())

    def answer_aside(conn: Connection, request: _Request) -> None:
        if _reply(conn, index, request):
            join(conn)

    threading.Thread(target=accept_forever, name="accept", daemon=True).start()
    # One selector for the process's life, not one per wait: `multiprocessing.connection.wait`
    # builds and fills a new one each time (42 us of CPU per search at 20 k points, 4 clients).
    selector = selectors.DefaultSelector()
    selector.register(lifeline, selectors.EVENT_READ)
    selector.register(wake_recv, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in selector.select():
                ready_conn = key.fileobj
                if ready_conn is lifeline:
                    return
                if ready_conn is wake_recv:
                    wake_recv.recv()
                    selector.register(joining.get(), selectors.EVENT_READ)
                    continue
                conn: Connection = ready_conn  # type: ignore[assignment]
                request = _receive(conn)
                if request is None:
                    selector.unregister(conn)
                    conn.close()
                elif request[0] in _READS:
                    if not _reply(conn, index, request):
                        selector.unregister(conn)
                        conn.close()
                else:  # out of the loop until its answer is sent
                    selector.unregister(conn)
                    threading.Thread(target=answer_aside, args=(conn, request), daemon=True).start()
    finally:
        try:
            index.close()  # releases the shards (their WAL locks) before the process ends
        finally:
            os._exit(0)


class _LoopConnection:
    """A connection to the child that lives on one event loop (`IndexProcess.call_async`): its
    socket stays non-blocking and registered with the loop, so a call costs one write and the
    answer one read. Waiting on a blocking `Connection` instead cost ten system calls per search
    (the reader added and removed, the socket made non-blocking and blocking again, two reads).
    The framing is `Connection.send_bytes`'s: a 4-byte big-endian length (-1, then 8 bytes, past
    2 GiB), then the bytes. No asyncio transport: a loop that ends with one open warns (and
    uvloop's then hangs in a test run that makes warnings errors), while a reader just lapses."""

    def __init__(self, conn: Connection) -> None:
        self.loop = asyncio.get_running_loop()
        self._conn = conn  # owns the socket (closes it silently if dropped)
        self._fd = conn.fileno()
        self._buffer = bytearray()
        self._answer: asyncio.Future[bytes] | None = None
        self.lost = False
        os.set_blocking(self._fd, False)
        self.loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lose()
            return
        self._buffer += data
        if self._answer is not None and not self._answer.done():
            frame = self._frame()
            if frame is not None:
                self._answer.set_result(frame)

    def _lose(self) -> None:
        self.lost = True
        self.loop.remove_reader(self._fd)
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(EOFError("the index process closed the connection"))

    def _frame(self) -> bytes | None:
        """The first whole message in the buffer (taken out of it), or None."""
        if len(self._buffer) < 4:
            return None
        (size,) = struct.unpack_from("!i", self._buffer)
        start = 4
        if size == -1:
            if len(self._buffer) < 12:
                return None
            (size,) = struct.unpack_from("!Q", self._buffer, 4)
            start = 12
        if len(self._buffer) < start + size:
            return None
        frame = bytes(self._buffer[start : start + size])
        del self._buffer[: start + size]
        return frame

    async def call(self, request: bytes) -> bytes:
        """Send ``request`` (pickled); its answer's bytes."""
        if self.lost:
            raise EOFError("the index process closed the connection")
        size = len(request)
        message = (struct.pack("!i", size) if size <= 0x7FFFFFFF else struct.pack("!iQ", -1, size)) + request
        try:
            sent = os.write(self._fd, message)
        except BlockingIOError:
            sent = 0
        if sent < len(message):  # more than the socket's buffer holds: not a search's few KB
            os.set_blocking(self._fd, True)
            try:
                rest = memoryview(message)[sent:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
            finally:
                os.set_blocking(self._fd, False)
        self._answer = self.loop.create_future()
        try:
            return await self._answer
        finally:
            self._answer = None

    def close(self) -> None:
        """Close it, from any thread."""
        if self.loop.is_closed() or self.lost:
            self._conn.close()
        else:
            self.loop.call_soon_threadsafe(self._close_on_loop)

    def _close_on_loop(self) -> None:
        if not self.lost:
            self._lose()
        self._conn.close()


class IndexProcess:
    """An `EdgeIndex` under ``root``, opened by a child process started here; `call` runs one of
    its methods there. ``busy`` counts the calls in flight (for routing searches)."""

    def __init__(self, root: Path, store: StoreSettings, *, role: str = "index") -> None:
        self.role = role
        self._dir = tempfile.mkdtemp(prefix=f"radsearch-{role}-")
        self._address = os.path.join(self._dir, "socket")
        self._authkey = os.urandom(32)
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        # `call_async`'s idle connections, by the event loop they live on (tests run many loops)
        self._idle_on_loop: dict[asyncio.AbstractEventLoop, list[_LoopConnection]] = {}
        self._busy_lock = threading.Lock()
        self.busy = 0
        self.closed = False
        self._lost = False
        context = multiprocessing.get_context("spawn")
        ready_recv, ready_send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve,
            args=(Path(root), store, self._address, self._authkey, ready_send, role),
            name=f"radsearch-{role}",
            daemon=True,
        )
        self._process.start()
        ready_send.close()
        try:
            if ready_recv.poll(_START_TIMEOUT_S):
                status, value = ready_recv.recv()
            else:
                status, value = (
                    "err",
                    IndexStoreError(f"the {role} process did not start within {_START_TIMEOUT_S:.0f} s"),
                )
        except EOFError:
            status, value = "err", IndexStoreError(f"the {role} process exited while starting")
        finally:
            ready_recv.close()
        if status == "err":
            self._stop(wait_s=5)
            raise value
        try:
            self._lifeline = self._connect()
        except IndexStoreError:  # it died right after it said it was ready
            self._stop(wait_s=5)
            raise
        self.pid: int = value
        logger.info("%s process started pid=%s", role, value)

    def _connect(self) -> Connection:
        """A new connection, through the handshake; `IndexStoreError` where the child is gone
        (then `alive` is False at once: a dying child's process can outlive its socket)."""
        try:
            return Client(self._address, family="AF_UNIX", authkey=self._authkey)
        except (EOFError, OSError) as exc:  # EOF: it died while answering the handshake
            self._lost = True
            raise IndexStoreError(f"the {self.role} process is not running") from exc

    @property
    def exitcode(self) -> int | None:
        """The child's exit code once it has ended (negative: the signal that ended it), else None."""
        return self._process.exitcode

    @property
    def sentinel(self) -> int:
        """A descriptor that becomes ready when the child process ends (for `connection.wait`)."""
        return self._process.sentinel

    @property
    def alive(self) -> bool:
        """Running and reachable: False once a call found its connection cut (a killed child can
        look alive for a moment after)."""
        return not self.closed and not self._lost and self._process.is_alive()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)`` of the child's index: its result, or its error raised here;
        `IndexStoreError` when the child is not running."""
        conn = self._take()
        with self._busy_lock:
            self.busy += 1
        try:
            _send(conn, (method, args, kwargs))
            status, value = _recv(conn)
        except (EOFError, OSError) as exc:
            raise self._lost_on(conn) from exc
        finally:
            with self._busy_lock:
                self.busy -= 1
        return self._answer(conn, status, value)

    async def call_async(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`call` for a caller on an event loop: the answer is awaited on the loop (on a
        connection that lives there, `_LoopConnection`) instead of waited for in a worker thread,
        whose hand-offs cost the API process CPU (bench/RESULTS.md, sessions 14 and 18)."""
        conn = self._take_on_loop()
        with self._busy_lock:
            self.busy += 1
        try:
            answer = await conn.call(pickle.dumps((method, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
        except (EOFError, OSError) as exc:
            raise self._lost_on(conn) from exc
        except BaseException:  # cancelled while the answer was due: the connection is out of step
            conn.close()
            raise
        finally:
            with self._busy_lock:
                self.busy -= 1
        self._idle_on_loop.setdefault(conn.loop, []).append(conn)
        status, value = pickle.loads(answer)
        if status == "err":
            raise value
        return value

    def _take_on_loop(self) -> _LoopConnection:
        """An idle connection on the running loop, or one taken over from `_take`."""
        idle = self._idle_on_loop.get(asyncio.get_running_loop())
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn
            conn.close()
        for loop in [loop for loop in self._idle_on_loop if loop.is_closed()]:
            for conn in self._idle_on_loop.pop(loop, []):
                conn.close()
        return _LoopConnection(self._take())

    def _take(self) -> Connection:
        """An idle connection to the child, or a new one."""
        if self.closed:
            raise IndexStoreError(f"the {self.role} process is closed")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._connect()

    def _lost_on(self, conn: Connection | _LoopConnection) -> IndexStoreError:
        conn.close()
        self._lost = True
        return IndexStoreError(f"the {self.role} process is not running")

    def _answer(self, conn: Connection, status: str, value: Any) -> Any:
        self._idle.put(conn)
        if status == "err":
            raise value
        return value

    def close(self) -> None:
        """Stop the child process (it closes its shards first); idempotent."""
        if self.closed:
            return
        self.closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        for connections in list(self._idle_on_loop.values()):
            for conn in connections:
                conn.close()
        self._idle_on_loop.clear()
        self._lifeline.close()
        self._stop()

    def _stop(self, wait_s: float = 60) -> None:
        self._process.join(timeout=wait_s)
        if self._process.is_alive():
            logger.warning("%s process did not exit; killing it", self.role)
            self._process.kill()  # it ignores SIGTERM (`_serve`)
            self._process.join(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)
