"""The upstream client (one aiohttp session) against raw sockets writing exact bytes."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from multidict import CIMultiDict
from yarl import URL

from router.config import Backend
from router.egress import Egress
from router.errors import UpstreamError, UpstreamTimeout
from router.upstream import MAX_HEADERS, Upstream
from tests.support.raw_upstream import Handler, RawUpstream, chunk, reset, response

HEADERS = CIMultiDict({"Content-Type": "application/json", "Authorization": "Bearer sk-test-123456",
           "Accept-Encoding": "identity"})  # fmt: skip
Serve = Callable[[Handler], Awaitable[RawUpstream]]


def egress(server: RawUpstream, **timeouts: float) -> Egress:
    cfg = Backend(provider="openai", url=server.url, timeouts=timeouts)
    return Egress.for_backend("raw", cfg, server.url, environ={})


def chat(server: RawUpstream) -> URL:
    return URL(server.url + "/chat/completions")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream()
    yield client
    assert not client.deadlines.watches  # every call, failed or not, let go of its watch
    await client.close()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[RawUpstream] = []

    async def start(handler: Handler) -> RawUpstream:
        server = await RawUpstream(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def post(upstream: Upstream, server: RawUpstream, body: bytes = b"{}", **t: Any) -> bytes:
    opened = await upstream.post(chat(server), HEADERS, body, egress(server, **t))
    try:
        return await opened.read()
    finally:
        opened.close()


async def test_keep_alive_pool_and_the_request_sent(upstream: Upstream, serve: Serve) -> None:
    async def echo(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (body := await srv.read_request(r)) is not None:
            await srv.write(w, response(body))

    server = await serve(echo)
    for i in range(3):
        assert await post(upstream, server, b'{"n":%d}' % i) == b'{"n":%d}' % i
    assert server.connections == 1  # one kept-alive connection served all three
    head = server.requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/chat/completions http/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:%d" % server.port in head
    assert b"\r\naccept-encoding: identity" in head
    assert b"user-agent" not in head


async def test_early_hints_then_the_answer_and_the_next_request_gets_its_own(
    upstream: Upstream, serve: Serve
) -> None:
    """A 103 before the answer is not the answer: each caller on the pooled
    connection gets its own body, never the previous request's."""

    async def hints(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (body := await srv.read_request(r)) is not None:
            await srv.write(w, b"HTTP/1.1 103 Early Hints\r\nLink: </x.css>; rel=preload\r\n\r\n")
            await asyncio.sleep(0.01)
            await srv.write(w, response(body))

    server = await serve(hints)
    assert await post(upstream, server, b'{"who":"first"}') == b'{"who":"first"}'
    assert await post(upstream, server, b'{"who":"second"}') == b'{"who":"second"}'
    assert server.connections == 1


async def test_oversized_and_countless_headers_are_refused_early(
    upstream: Upstream, serve: Serve
) -> None:
    """A flood of headers (55 MB) is a 502 after a few KB: the head is bounded in
    line size and header count, so memory stays bounded."""

    async def flood(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        line = b"X-Filler-%06d: " + b"a" * 200 + b"\r\n"
        for i in range(250_000):
            await srv.write(w, line % i)

    async def long_line(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, b"HTTP/1.1 200 OK\r\nX-Long: " + b"b" * (1 << 20) + b"\r\n\r\n{}")

    many = await serve(flood)
    with pytest.raises(UpstreamError, match="response head") as err:
        await post(upstream, many)
    assert err.value.status == 502
    assert many.written < 8 << 20  # the client hung up long before the 55 MB were sent
    assert MAX_HEADERS * 220 < 8 << 20
    big = await serve(long_line)
    with pytest.raises(UpstreamError, match="response head"):
        await post(upstream, big)


async def test_truncated_bodies_are_errors_not_answers(upstream: Upstream, serve: Serve) -> None:
    async def short(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')
        w.close()

    async def cut(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + chunk(b"data: {}\n\n"))  # fmt: skip
        w.close()

    with pytest.raises(UpstreamError, match="broke"):
        await post(upstream, await serve(short))
    server = await serve(cut)
    opened = await upstream.post(chat(server), HEADERS, b"{}", egress(server))
    assert opened.is_stream
    got = []
    with pytest.raises(UpstreamError, match="broke"):
        async for data in opened.chunks():
            got.append(data)
    opened.close()
    assert got == [b"data: {}\n\n"]


async def test_a_reset_after_the_request_is_never_sent_again(
    upstream: Upstream, serve: Serve
) -> None:
    """The second request rides the kept-alive connection and the server resets
    it after reading the request: the library must not re-send the POST."""

    async def resets(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, response(b"{}"))
        await srv.read_request(r)
        reset(w)

    server = await serve(resets)
    assert await post(upstream, server) == b"{}"
    with pytest.raises(UpstreamError) as err:
        await post(upstream, server)
    assert not isinstance(err.value, UpstreamTimeout)
    await asyncio.sleep(0.1)
    assert len(server.requests) == 2 and server.connections == 1


async def test_a_compressed_answer_arrives_decoded(upstream: Upstream, serve: Serve) -> None:
    answer = b'{"id":"x","choices":[]}'

    async def zipped(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            await srv.write(w, response(gzip.compress(answer),
                                        headers={"Content-Encoding": "gzip"}))  # fmt: skip

    async def brotli(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, response(b"\x8b\x00\x80garbage", headers={"Content-Encoding": "br"}))

    async def unknown(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, response(b"\x1f\x9d", headers={"Content-Encoding": "compress"}))

    server = await serve(zipped)
    assert await post(upstream, server) == answer
    assert b"accept-encoding: identity" in server.requests[0].lower()
    for handler in (brotli, unknown):
        with pytest.raises(UpstreamError):
            await post(upstream, await serve(handler))


async def test_timeouts_first_byte_idle_and_total(upstream: Upstream, serve: Serve) -> None:
    async def late_head(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await asyncio.sleep(0.6)
        await srv.write(w, response(b"{}"))

    async def drip(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100):
            await srv.write(w, chunk(b"x"))
            await asyncio.sleep(srv_pause[0])

    srv_pause = [2.0]
    # the head may take longer than idle: first_byte applies to it, not idle
    assert await post(upstream, await serve(late_head), idle=0.2, first_byte=5) == b"{}"
    with pytest.raises(UpstreamTimeout, match="did not answer in time"):
        await post(upstream, await serve(late_head), first_byte=0.2)
    began = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="idle"):
        await post(upstream, await serve(drip), idle=0.3)
    assert time.monotonic() - began < 1.9
    srv_pause[0] = 0.05  # a drip fast enough for idle, too slow for total
    began = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="total"):
        await post(upstream, await serve(drip), idle=1.5, total=0.5)
    assert time.monotonic() - began < 3


async def test_connect_errors(upstream: Upstream) -> None:
    cfg = Backend(provider="openai", url="http://127.0.0.1:9/v1")
    dead = Egress.for_backend("dead", cfg, cfg.url, environ={})
    with pytest.raises(UpstreamError, match="'dead' is unreachable"):
        await upstream.post(URL("http://127.0.0.1:9/v1/chat/completions"), HEADERS, b"{}", dead)


async def test_an_answer_over_the_size_limit_is_refused(upstream: Upstream, serve: Serve) -> None:
    async def big(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            await srv.write(w, response(b"x" * 100))  # whole, with the head

    async def chunked(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(10):
            await srv.write(w, chunk(b"y" * 10))
            await asyncio.sleep(0.01)
        await srv.write(w, b"0\r\n\r\n")

    for handler in (big, chunked):
        server = await serve(handler)
        opened = await upstream.post(chat(server), HEADERS, b"{}", egress(server))
        with pytest.raises(UpstreamError, match="more than 50 bytes"):
            await opened.read(limit=50)
        opened.close()
        opened = await upstream.post(chat(server), HEADERS, b"{}", egress(server))
        assert len(await opened.read(limit=100)) == 100
        opened.close()
