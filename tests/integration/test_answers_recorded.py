"""Every answer is recorded as what it was.

* An unexpected exception (a bug) is a 500 in OpenAI's envelope carrying the
  request id (header and message), logged with its traceback exactly once, and
  counted as 5xx in the metrics and the access log: before the answer started,
  in the middle of a stream (ended in-band), and outside the model endpoints.
* A client that resets its connection just as the first chunk arrives is a 499,
  with no traceback.
* Unknown paths (404) and wrong methods (405) carry ``x-request-id``, write an
  access-log line and are counted under the bounded route label ``unmatched``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from router.attempts import Walk
from router.providers.openai import OpenAIAdapter
from router.routing.rules import Rules
from tests.support.fakes import FakeOpenAI
from tests.support.fleet import KEY, fleet_config, members, metric, post, sse_events
from tests.support.gateway import Running, start_gateway
from tests.support.raw_client import port_of, raw_request, request_bytes, reset
from tests.support.raw_upstream import RawUpstream, chunk

LOGGING = {"requests": True, "format": "text"}  # access lines go through `logging`


def config(url: str) -> dict[str, Any]:
    return fleet_config({"up": {"provider": "openai", "url": url}},
                        {"p": {"members": members("up")}}, logging=LOGGING)  # fmt: skip


@pytest.fixture
async def gw(upstream: FakeOpenAI) -> AsyncIterator[Running]:
    running = await start_gateway(config(upstream.url))
    yield running
    await running.stop()


@pytest.fixture(autouse=True)
def access_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="spillway.access")


def access(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "spillway.access"]  # type: ignore[attr-defined]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info]


class Boom(Exception):
    pass


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Boom("a bug")


def requests_5xx(gw: Running) -> float:
    return metric(gw, "spillway_requests_total", endpoint="chat", model="chat", pool="p",
                  backend="up", team="t", status_class="5xx")  # fmt: skip


async def test_an_unexpected_exception_is_a_500_recorded_once(
    gw: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(Walk, "_headers", boom)
    async with aiohttp.ClientSession() as s:
        r = await post(s, gw)
    await asyncio.sleep(0)  # the access log is written after the answer
    rid = r.headers["x-request-id"]
    assert r.status == 500
    error = r.json()["error"]
    assert error["type"] == "api_error" and error["code"] == "internal_error"
    assert rid in error["message"] and "a bug" not in error["message"]
    (record,) = tracebacks(caplog)
    assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
    assert rid in record.getMessage()
    assert requests_5xx(gw) == 1
    assert [(line["request_id"], line["status"]) for line in access(caplog)] == [(rid, 500)]


async def test_an_unexpected_exception_mid_stream_ends_it_as_a_500(
    gw: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(OpenAIAdapter, "transform_chunk", boom)  # once the answer started
    async with aiohttp.ClientSession() as s:
        r = await post(s, gw, stream=True)
    await asyncio.sleep(0)
    rid = r.headers["x-request-id"]
    assert r.status == 200  # the stream had started
    events = sse_events(r.body)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "internal_error" and rid in events[-2]["error"]["message"]
    assert len(tracebacks(caplog)) == 1
    assert requests_5xx(gw) == 1
    assert [line["status"] for line in access(caplog)] == [500]


async def test_an_unexpected_exception_after_the_stream_is_logged_once(
    gw: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(Walk, "_settle", boom)  # once the stream was relayed
    async with aiohttp.ClientSession() as s:
        r = await post(s, gw, stream=True)
    await asyncio.sleep(0)
    assert r.status == 200 and sse_events(r.body)[-1] == "[DONE]"  # the client got it all
    assert len(tracebacks(caplog)) == 1
    assert requests_5xx(gw) == 1
    assert [line["status"] for line in access(caplog)] == [500]


async def test_an_unexpected_exception_outside_the_proxy_is_a_500(
    gw: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(Rules, "visible_models", boom)
    reply = await raw_request(port_of(gw.url), b"GET", b"/v1/models",
                              [(b"Authorization", b"Bearer " + KEY.encode())])  # fmt: skip
    await asyncio.sleep(0)
    rid = reply.headers["x-request-id"]
    assert reply.status == 500
    assert rid in reply.json()["error"]["message"]  # type: ignore[index]
    assert len(tracebacks(caplog)) == 1
    assert metric(gw, "spillway_http_requests_total", route="/v1/models", method="GET",
                  status_class="5xx") == 1  # fmt: skip
    (line,) = access(caplog)
    assert line["request_id"] == rid and line["status"] == 500 and line["team"] == "t"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [(b"GET", b"/nope", 404), (b"POST", b"/v1/assistants", 404),
     (b"GET", b"/v1/%ff%fe/x", 404), (b"DELETE", b"/v1/models", 405),
     (b"GET", b"/v1/chat/completions", 405), (b"PROPFIND", b"/v1/quota", 405)],
)  # fmt: skip
async def test_unknown_paths_and_methods_are_recorded(
    gw: Running, method: bytes, path: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    reply = await raw_request(port_of(gw.url), method, path, [])
    await asyncio.sleep(0)
    assert reply.status == status
    assert reply.json()["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    rid = reply.headers["x-request-id"]
    (line,) = access(caplog)
    assert line["request_id"] == rid and line["status"] == status
    assert line["route"] == "unmatched"
    shown = method.decode() if method != b"PROPFIND" else "other"
    assert metric(gw, "spillway_http_requests_total", route="unmatched", method=shown,
                  status_class="4xx") == 1  # fmt: skip
    exposition = gw.gateway.metrics.exposition().decode()
    assert path.decode("latin-1") not in exposition  # never the raw path as a label
    assert not tracebacks(caplog)


async def test_other_answers_are_counted_under_their_route(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    auth = [(b"Authorization", b"Bearer " + KEY.encode())]
    port = port_of(gw.url)
    for path in (b"/v1/models", b"/v1/models/chat", b"/v1/quota", b"/healthz"):
        assert (await raw_request(port, b"GET", path, auth)).status == 200
    await asyncio.sleep(0)
    assert metric(gw, "spillway_http_requests_total", route="/v1/models/{model}",
                  method="GET", status_class="2xx") == 1  # fmt: skip
    assert metric(gw, "spillway_http_requests_total", route="/v1/quota", method="GET",
                  status_class="2xx") == 1  # fmt: skip
    lines = access(caplog)
    assert [line["route"] for line in lines] == [
        "/v1/models",
        "/v1/models/{model}",
        "/v1/quota",
        "/healthz",
    ]
    assert all(line["request_id"] for line in lines)
    # the proxy's own answers are logged and counted once, by the proxy
    async with aiohttp.ClientSession() as s:
        assert (await post(s, gw)).status == 200
    await asyncio.sleep(0)
    assert len(access(caplog)) == 5 and access(caplog)[-1]["endpoint"] == "chat"
    assert metric(gw, "spillway_http_requests_total", route="/v1/chat/completions",
                  method="POST", status_class="2xx") == 0  # fmt: skip


async def test_a_client_that_resets_at_the_first_chunk_is_a_499(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The upstream's first chunk and the client's RST reach the gateway together:
    the gateway finds the connection gone as it starts the answer."""
    client: list[socket.socket] = []
    first = (
        'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"llama",'
        '"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    )

    async def upstream(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await srv.read_request(r) is None:
            return
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunk(first.encode()))  # fmt: skip
        reset(client[0])  # in the same loop step: both arrive before the gateway reads
        await w.drain()
        await asyncio.sleep(0.5)

    raw = await RawUpstream(upstream).start()
    gw = await start_gateway(config(raw.url))
    try:
        body = orjson.dumps({"model": "chat", "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        sock = socket.create_connection(("127.0.0.1", port_of(gw.url)))
        sock.setblocking(False)
        client.append(sock)
        auth = [(b"Authorization", b"Bearer " + KEY.encode())]
        sock.sendall(request_bytes(b"POST", b"/v1/chat/completions", auth, body))
        for _ in range(200):
            if access(caplog):
                break
            await asyncio.sleep(0.01)
        (line,) = access(caplog)
        assert line["status"] == 499
        assert not tracebacks(caplog)
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        assert metric(gw, "spillway_requests_total", endpoint="chat", model="chat", pool="p",
                      backend="up", team="t", status_class="4xx") == 1  # fmt: skip
    finally:
        await gw.stop()
        await raw.stop()
