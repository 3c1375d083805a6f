"""The gateway against upstreams on raw sockets that misbehave at the byte level.

Each case was a failure of the hand-written client this one replaced: a 1xx
taken for the answer (and the next caller handed the previous body), POSTs sent
twice after a reset, unbounded headers, compressed bytes passed on as JSON.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest

from tests.support.fleet import fleet_config, members, metric, post, sse_events
from tests.support.gateway import Running, start_gateway
from tests.support.raw_upstream import Handler, RawUpstream, chunk, reset, response


def completion(text: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 1, "model": "llama",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    })  # fmt: skip


def stream_events(n: int) -> list[bytes]:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "llama"}
    return [b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {
        "content": f"w{i} "}, "finish_reason": None}]}) + b"\n\n" for i in range(n)]  # fmt: skip


Start = Callable[[Handler], Awaitable[tuple[RawUpstream, Running]]]


@pytest.fixture
async def behind_gateway() -> AsyncIterator[Start]:
    """A raw upstream as the only member of the only pool."""
    started: list[tuple[RawUpstream, Running]] = []

    async def start(handler: Handler) -> tuple[RawUpstream, Running]:
        raw = await RawUpstream(handler).start()
        gw = await start_gateway(fleet_config(
            {"raw": {"provider": "openai", "url": raw.url, "timeouts": {"idle": 0.5}}},
            {"p": {"members": members("raw")}}, health={"failure_threshold": 1000},
        ))  # fmt: skip
        started.append((raw, gw))
        return raw, gw

    yield start
    for raw, gw in started:
        await gw.stop()
        await raw.stop()


async def test_early_hints_do_not_cross_answers(behind_gateway: Start) -> None:
    async def hints(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = 0
        while await srv.read_request(r) is not None:
            n += 1
            await srv.write(w, b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
            await asyncio.sleep(0.05)  # the hint and the answer in separate reads
            await srv.write(w, response(completion(f"answer {n}")))

    raw, gw = await behind_gateway(hints)
    async with aiohttp.ClientSession() as s:
        first = await post(s, gw)
        second = await post(s, gw)
    assert (first.status, second.status) == (200, 200)
    assert first.json()["choices"][0]["message"]["content"] == "answer 1"
    assert second.json()["choices"][0]["message"]["content"] == "answer 2"
    assert raw.connections == 1


async def test_header_flood_is_a_502(behind_gateway: Start) -> None:
    async def flood(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, b"HTTP/1.1 200 OK\r\n")
        for i in range(250_000):
            await srv.write(w, b"X-Filler-%06d: %b\r\n" % (i, b"a" * 200))

    raw, gw = await behind_gateway(flood)
    async with aiohttp.ClientSession() as s:
        r = await post(s, gw)
    assert r.status == 502 and r.json()["error"]["code"] == "upstream_error"
    assert "response head" in r.json()["error"]["message"]
    assert raw.written < 8 << 20


async def test_reset_after_the_request_is_sent_once_and_counted_once(
    behind_gateway: Start,
) -> None:
    """A kept-alive connection reset after the request was written: the library does
    not send it again (the upstream may be generating, and billing, it); the route
    counts one failed attempt and answers 502."""

    async def resets(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, response(completion("fine")))
        await srv.read_request(r)
        reset(w)

    raw, gw = await behind_gateway(resets)
    async with aiohttp.ClientSession() as s:
        assert (await post(s, gw)).status == 200
        r = await post(s, gw)
    assert r.status == 502, r.body
    await asyncio.sleep(0.1)
    assert len(raw.requests) == 2 and raw.connections == 1
    assert metric(gw, "spillway_upstream_errors_total", backend="raw", kind="connect") == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_body_shorter_than_announced(behind_gateway: Start, stream: bool) -> None:
    """Before anything reached the client: a 502. Once a stream has started: an
    in-band error event, then [DONE]."""
    events = stream_events(3)

    async def short(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        if stream:
            await srv.write(w, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            for event in events:
                await srv.write(w, chunk(event))
                await asyncio.sleep(0.02)
        else:
            body = completion("cut")
            await srv.write(w, response(body)[: -len(body) // 2])
        w.close()

    _, gw = await behind_gateway(short)
    async with aiohttp.ClientSession() as s:
        r = await post(s, gw, stream=stream)
    if not stream:
        assert r.status == 502 and r.json()["error"]["code"] == "upstream_error"
        return
    assert r.status == 200
    got = sse_events(r.body)
    assert got[-1] == "[DONE]" and "error" in got[-2]
    assert [e["choices"][0]["delta"]["content"] for e in got[:3]] == ["w0 ", "w1 ", "w2 "]


async def test_gzip_despite_identity_reaches_the_client_decoded(behind_gateway: Start) -> None:
    async def zipped(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            await srv.write(w, response(gzip.compress(completion("zipped")),
                                        headers={"Content-Encoding": "gzip"}))  # fmt: skip

    raw, gw = await behind_gateway(zipped)
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        r = await post(s, gw)
    assert r.status == 200 and "Content-Encoding" not in r.headers
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["choices"][0]["message"]["content"] == "zipped"
    assert b"accept-encoding: identity" in raw.requests[0].lower()


async def test_slow_drip_past_the_idle_timeout(behind_gateway: Start) -> None:
    async def drip(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await srv.read_request(r)
        await srv.write(w, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        for event in stream_events(5):
            await srv.write(w, chunk(event))
            await asyncio.sleep(3)

    _, gw = await behind_gateway(drip)
    async with aiohttp.ClientSession() as s:
        r = await post(s, gw, stream=True)
    got = sse_events(r.body)
    assert r.status == 200 and got[-1] == "[DONE]"
    assert got[-2]["error"]["code"] == "upstream_timeout"
    assert r.elapsed < 2.5
