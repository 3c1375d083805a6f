"""The lean upstream HTTP/1.1 client against raw TCP servers that write exact bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from router import http1
from router.errors import UpstreamError, UpstreamTimeout

T = http1.Timeouts(connect=1.0, first_byte=1.0, idle=0.3, total=5.0)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Counts connections; each one is served by ``handler`` until it returns."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(r, w)
        finally:
            w.close()

    async def read_request(self, r: asyncio.StreamReader) -> bytes | None:
        head = await r.readuntil(b"\r\n\r\n") if not r.at_eof() else b""
        if not head:
            return None
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))  # fmt: skip
        body = await r.readexactly(length)
        self.requests.append(head + body)
        return body

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        s = RawServer(handler)
        s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()
        await s.server.wait_closed()


def target(url: str, pools: dict[tuple[str, str, int], http1.Pool]) -> http1.Target:
    return http1.Target(url, {"Authorization": "Bearer k", "Content-Type": "application/json"},
                        T, pools)  # fmt: skip


async def test_keep_alive_reuse_and_exact_request_bytes(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (body := await srv.read_request(r)) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(body), body))  # fmt: skip
            await w.drain()

    srv = await serve(handler)
    pools: dict[tuple[str, str, int], http1.Pool] = {}
    t = target(srv.url, pools)
    for i in range(3):
        resp = await t.post(b'{"n":%d}' % i, {"X-Request-Id": f"r{i}"})
        assert (resp.status, resp.content_type, resp.is_stream) == (200, "application/json", False)
        assert await resp.read() == b'{"n":%d}' % i
        resp.close()
    assert srv.connections == 1  # one kept-alive connection served all three
    head = srv.requests[0]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in head and b"\r\nX-Request-Id: r0\r\n" in head
    assert b"\r\nAccept-Encoding: identity\r\n" in head and head.endswith(b'\r\n\r\n{"n":0}')
    http1.close_pools(pools)


async def test_chunked_stream_arrives_in_pieces(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        for part in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            w.write(b"%x\r\n%b\r\n" % (len(part), part))
            await w.drain()
            await asyncio.sleep(0.02)
        w.write(b"0\r\n\r\n")
        await w.drain()
        await r.read()

    srv = await serve(handler)
    pools: dict[tuple[str, str, int], http1.Pool] = {}
    resp = await target(srv.url, pools).post(b"{}", {})
    assert resp.is_stream
    got = [piece async for piece in resp.chunks()]
    assert got == [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    assert resp.finished
    resp.close()
    assert len(next(iter(pools.values())).idle) == 1  # read to the end: kept
    http1.close_pools(pools)


async def test_stale_kept_alive_connection_is_replaced(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        # then close: the client's idle connection is now dead

    srv = await serve(handler)
    pools: dict[tuple[str, str, int], http1.Pool] = {}
    t = target(srv.url, pools)
    first = await t.post(b"{}", {})
    assert await first.read() == b"ok"
    first.close()
    await asyncio.sleep(0.05)
    second = await t.post(b"{}", {})  # sent again on a new connection, transparently
    assert await second.read() == b"ok"
    second.close()
    assert srv.connections == 2
    http1.close_pools(pools)


async def test_unfinished_answer_is_not_reused_and_connection_close_honoured(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nab")
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"cd")
            await w.drain()

    srv = await serve(handler)
    pools: dict[tuple[str, str, int], http1.Pool] = {}
    t = target(srv.url, pools)
    resp = await t.post(b"{}", {})
    resp.close()  # body not read: the connection is dropped, never pooled
    resp = await t.post(b"{}", {})
    assert await resp.read() == b"abcd"
    resp.close()  # read to the end, but the server said Connection: close
    assert srv.connections == 2
    assert not next(iter(pools.values())).idle
    http1.close_pools(pools)


async def test_errors_and_timeouts(serve: Callable[..., Awaitable[RawServer]]) -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        await w.drain()
        await r.read()

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await slow.read_request(r)
        await asyncio.sleep(2)

    async def stalls(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await stall.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await w.drain()
        await asyncio.sleep(2)

    srv = await serve(garbage)
    slow = await serve(silent)
    stall = await serve(stalls)
    pools: dict[tuple[str, str, int], http1.Pool] = {}
    with pytest.raises(UpstreamError, match="malformed"):
        await target(srv.url, pools).post(b"{}", {})
    with pytest.raises(UpstreamTimeout):
        await target(slow.url, pools).post(b"{}", {})
    resp = await target(stall.url, pools).post(b"{}", {})
    with pytest.raises(UpstreamTimeout, match="idle"):
        await resp.read()
    resp.close()
    dead = http1.Target("http://127.0.0.1:9/x", {}, T, pools)
    with pytest.raises(http1.ConnectFailed):
        await dead.post(b"{}", {})
    http1.close_pools(pools)


async def test_body_delimited_by_the_end_of_the_connection(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        w.write(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"ok": true}')
        await w.drain()

    srv = await serve(handler)
    pools: dict[tuple[str, str, int], http1.Pool] = {}
    resp = await target(srv.url, pools).post(b"{}", {})
    assert await resp.read() == b'{"ok": true}'
    resp.close()
    assert not next(iter(pools.values())).idle  # HTTP/1.0: not kept alive
    http1.close_pools(pools)
