"""A lean HTTP/1.1 client for upstream chat calls (keep-alive pools, llhttp parser).

The gateway sends one kind of request upstream: a POST with a small JSON body,
answered by JSON or by a stream. aiohttp's client spends more CPU per request
than the rest of the gateway together, so this module does just that job: a
pool of keep-alive connections per host, the request written in one buffer,
the response parsed by llhttp (``httptools``) with its body handed over as it
arrives. Timeouts: connect, to the first byte, idle between reads, total.
Nothing is followed (a redirect is an answer), nothing is decompressed
(``Accept-Encoding: identity`` is always sent), and a response that is not
read to its end is never put back in the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from router.errors import UpstreamError, UpstreamTimeout

_EOF = b""


class ConnectFailed(UpstreamError):
    """The upstream could not be reached (nothing was sent)."""


class Timeouts:
    __slots__ = ("connect", "first_byte", "idle", "total")

    def __init__(self, connect: float, first_byte: float, idle: float, total: float) -> None:
        self.connect, self.first_byte, self.idle, self.total = connect, first_byte, idle, total


class Response:
    """One upstream answer: status and headers at once, the body as it arrives."""

    __slots__ = ("_conn", "_done", "_pieces", "_waiter", "error", "head", "headers", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.status = 0
        self.head = False  # status line and headers are in
        self.headers: dict[str, str] = {}  # lower-cased names
        self._pieces: deque[bytes] = deque()
        self._done = False
        self._waiter: asyncio.Future[None] | None = None
        self.error: UpstreamError | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def is_stream(self) -> bool:
        return self.content_type == "text/event-stream"

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read(self) -> bytes:
        """The whole body."""
        while not self._done and self.error is None:
            await self._wait()
        if self.error is not None:
            raise self.error
        body = b"".join(self._pieces)
        self._pieces.clear()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive."""
        while True:
            if self._pieces:
                yield self._pieces.popleft()
                continue
            if self.error is not None:
                raise self.error
            if self._done:
                return
            await self._wait()

    @property
    def finished(self) -> bool:
        return self._done and not self._pieces

    def close(self) -> None:
        """Hand the connection back when the answer was read to its end; else drop it."""
        self._conn.finish(self, reuse=self._done and self.error is None)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.keep_alive = True
        self.closed = False
        self._header_name = b""
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._idle = 0.0
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:  # unsolicited bytes on an idle connection: drop it
            self.abort()
            return
        if self._idle:
            self._arm(self._idle, "The upstream went idle mid-answer (timeout).")
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"The upstream sent a malformed answer ({exc})."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        resp = self.response
        if resp is not None and not resp._done and resp.error is None:
            h = resp.headers
            if resp.head and "content-length" not in h and "transfer-encoding" not in h:
                resp._done = True  # a body delimited by the end of the connection
            else:
                resp.error = UpstreamError(
                    "The upstream stream broke: the connection closed mid-answer."
                )
            resp._wake()
        self.pool.forget(self)

    # -- llhttp callbacks ------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        assert self.response is not None
        self.response.status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        self.keep_alive = self.parser.should_keep_alive()
        resp.head = True
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.response
        assert resp is not None
        resp._pieces.append(body)
        resp._wake()

    def on_message_complete(self) -> None:
        resp = self.response
        assert resp is not None
        resp._done = True
        self._disarm()
        resp._wake()

    # -- timers ----------------------------------------------------------------------
    def _arm(self, seconds: float, message: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(seconds, self._expire, message)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, message: str) -> None:
        self._fail(UpstreamTimeout(message))

    def _fail(self, error: UpstreamError) -> None:
        resp = self.response
        if resp is not None and resp.error is None and not resp._done:
            resp.error = error
            resp._wake()
        self.abort()

    # -- use -------------------------------------------------------------------------
    def start(self, request: bytes, t: Timeouts) -> Response:
        assert self.transport is not None
        resp = self.response = Response(self)
        self._idle = 0.0
        self._arm(t.first_byte, "The upstream did not answer in time.")
        self._deadline = self._loop.call_later(
            t.total, self._expire, "The upstream did not finish in time (total timeout)."
        )
        self.transport.write(request)
        return resp

    def headers_seen(self, idle: float) -> None:
        """From the first byte on, the idle timeout applies between reads."""
        self._idle = idle
        if self.response is not None and not self.response._done:
            self._arm(idle, "The upstream went idle mid-answer (timeout).")

    def finish(self, resp: Response, *, reuse: bool) -> None:
        if self.response is not resp:
            return
        self.response = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if reuse and self.keep_alive and not self.closed:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self.pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        self._disarm()
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()


class Pool:
    """Idle keep-alive connections to one host."""

    def __init__(self, scheme: str, host: str, port: int, max_idle: int = 256) -> None:
        self.host, self.port = host, port
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if scheme == "https" else None
        )
        self.idle: deque[_Conn] = deque()
        self.max_idle = max_idle

    async def acquire(self, connect_timeout: float) -> tuple[_Conn, bool]:
        """(connection, reused)."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self), self.host, self.port, ssl=self.ssl
                )
        except TimeoutError:
            raise UpstreamTimeout(f"Connecting to {self.host}:{self.port} timed out.") from None
        except OSError as exc:
            raise ConnectFailed(
                f"{self.host}:{self.port} is unreachable ({exc.strerror or type(exc).__name__})."
            ) from None
        return conn, False

    def put_back(self, conn: _Conn) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.abort()

    def forget(self, conn: _Conn) -> None:
        with contextlib.suppress(ValueError):  # not idle: nothing to forget
            self.idle.remove(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().abort()


class Target:
    """A POST endpoint: its pool and the constant part of its request head."""

    __slots__ = ("_head", "pool", "timeouts")

    def __init__(self, url: str, headers: Mapping[str, str], timeouts: Timeouts,
                 pools: dict[tuple[str, str, int], Pool]) -> None:  # fmt: skip
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = Pool(scheme, host, port)
        self.pool = pool
        self.timeouts = timeouts
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = host if parts.port is None else f"{host}:{port}"
        lines = [f"POST {path} HTTP/1.1", f"Host: {authority}", "Accept-Encoding: identity"]
        for name, value in headers.items():
            if name.lower() not in ("host", "content-length", "accept-encoding"):
                lines.append(f"{name}: {value}")
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def request(self, body: bytes, extra: Mapping[str, str]) -> bytes:
        head = self._head
        if extra:
            head += "".join(f"{k}: {v}\r\n" for k, v in extra.items()).encode("latin-1")
        return b"%bContent-Length: %d\r\n\r\n%b" % (head, len(body), body)

    async def post(self, body: bytes, extra: Mapping[str, str]) -> Response:
        """Send; return once the status and headers are in (the body may follow)."""
        packed = self.request(body, extra)
        t = self.timeouts
        for attempt in (0, 1):
            conn, reused = await self.pool.acquire(t.connect)
            resp = conn.start(packed, t)
            try:
                while not resp.head and resp.error is None:
                    await resp._wait()
            except BaseException:  # cancelled (the client went away): drop the call
                conn.finish(resp, reuse=False)
                raise
            if not resp.head:
                assert resp.error is not None
                conn.finish(resp, reuse=False)
                # a kept-alive connection the server had just closed: send it again, once
                if reused and attempt == 0 and not isinstance(resp.error, UpstreamTimeout):
                    continue
                raise resp.error
            conn.headers_seen(t.idle)
            return resp
        raise UpstreamError("The upstream closed the connection.")


def close_pools(pools: dict[Any, Pool]) -> None:
    for pool in pools.values():
        pool.close()
