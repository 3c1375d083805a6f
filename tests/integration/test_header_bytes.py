"""Header bytes from a hostile client: never a 500, never passed on as they came.

Sent over raw sockets, since ordinary clients refuse to send such bytes:

* a credential (``Authorization``, ``api-key``) that is not UTF-8 is a 401 in
  OpenAI's envelope on every authenticated route, with a request id;
* a malformed ``traceparent``, ``tracestate`` or ``baggage`` (bytes that are not
  ASCII, a wrong shape) is dropped: the request is served and the backend never
  sees it, while a well-formed one is forwarded;
* a session-affinity header with such bytes still routes the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.support.fakes import FakeOpenAI
from tests.support.fleet import KEY, fleet_config, members
from tests.support.gateway import Running, start_gateway
from tests.support.raw_client import parse_reply, port_of, raw_request

CHAT = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
EMBED = orjson.dumps({"model": "chat", "input": "hi"})
BEARER = [(b"Authorization", b"Bearer " + KEY.encode())]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Running, FakeOpenAI, FakeOpenAI]]:
    one, two = await FakeOpenAI("one").start(), await FakeOpenAI("two").start()
    doc: dict[str, Any] = fleet_config(
        {"one": {"provider": "openai", "url": one.url},
         "two": {"provider": "openai", "url": two.url}},
        {"p": {"members": members("one", "two"), "affinity": "header"}},
    )  # fmt: skip
    gw = await start_gateway(doc)
    yield gw, one, two
    await gw.stop()
    await one.stop()
    await two.stop()


ROUTES = [
    (b"POST", b"/v1/chat/completions", CHAT),
    (b"POST", b"/chat/completions", CHAT),
    (b"POST", b"/v1/completions", orjson.dumps({"model": "chat", "prompt": "hi"})),
    (b"POST", b"/v1/embeddings", EMBED),
    (b"POST", b"/openai/deployments/chat/chat/completions?api-version=2024-10-21", CHAT),
    (b"GET", b"/v1/models", b""),
    (b"GET", b"/v1/models/chat", b""),
    (b"GET", b"/v1/quota", b""),
    (b"GET", b"/v1/spillway/explain?model=chat", b""),
]
BAD_CREDENTIALS = [
    (b"Authorization", b"Bearer sk-\xff\xfe"),
    (b"Authorization", b"Bearer " + KEY.encode() + b"\x80"),
    (b"Authorization", b"Bearer eyJ\xc3\x28.a.b"),  # shaped like a JWT
    (b"api-key", b"\xc3\x28abc"),
]


@pytest.mark.parametrize("credential", BAD_CREDENTIALS, ids=lambda h: repr(h[1][:12]))
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r[1].decode().split("?")[0])
async def test_a_credential_that_is_not_utf8_is_a_401(
    pair: tuple[Running, FakeOpenAI, FakeOpenAI],
    route: tuple[bytes, bytes, bytes],
    credential: tuple[bytes, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, one, two = pair
    method, path, body = route
    headers = [credential, (b"Content-Type", b"application/json")]
    reply = await raw_request(port_of(gw.url), method, path, headers, body)
    assert reply.status == 401, reply.body
    error = reply.json()["error"]  # type: ignore[index]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert reply.headers.get("x-request-id")
    assert not one.seen and not two.seen
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


GARBAGE_TRACE = [
    (b"traceparent", b"\xff\xfe-00"),
    (b"traceparent", b"00-\xe2\x82\xac"),  # UTF-8, not Latin-1
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\x80"),
    (b"traceparent", b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    (b"traceparent", b"00-00000000000000000000000000000000-b7ad6b7169203331-01"),
    (b"tracestate", b"vendor=\xff"),
    (b"baggage", b"user=\x80\x81"),
    (b"tracestate", b"a=" + b"b" * 600),  # over its 512 characters
]


@pytest.mark.parametrize("header", GARBAGE_TRACE, ids=lambda h: repr(h[1][:16]))
async def test_a_malformed_trace_header_is_dropped(
    pair: tuple[Running, FakeOpenAI, FakeOpenAI], header: tuple[bytes, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    gw, one, two = pair
    reply = await raw_request(port_of(gw.url), b"POST", b"/v1/chat/completions",
                              [*BEARER, header], CHAT)  # fmt: skip
    assert reply.status == 200, reply.body
    seen = [*one.seen, *two.seen]
    assert len(seen) == 1
    assert header[0].decode() not in seen[0].headers
    assert seen[0].headers["X-Request-Id"] == reply.headers["x-request-id"]
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


async def test_a_well_formed_trace_context_is_forwarded(
    pair: tuple[Running, FakeOpenAI, FakeOpenAI],
) -> None:
    gw, one, two = pair
    parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = [*BEARER, (b"traceparent", parent), (b"tracestate", b"congo=t61rcWkgMzE"),
               (b"baggage", b"userId=alice")]  # fmt: skip
    reply = await raw_request(port_of(gw.url), b"POST", b"/v1/chat/completions", headers, CHAT)
    assert reply.status == 200, reply.body
    (seen,) = [*one.seen, *two.seen]
    assert seen.headers["traceparent"] == parent.decode()
    assert seen.headers["tracestate"] == "congo=t61rcWkgMzE"
    assert seen.headers["baggage"] == "userId=alice"


async def test_an_affinity_header_that_is_not_utf8_still_routes(
    pair: tuple[Running, FakeOpenAI, FakeOpenAI],
) -> None:
    gw, _, _ = pair
    headers = [*BEARER, (b"x-session-id", b"\xff\xfesession")]
    replies = [
        await raw_request(port_of(gw.url), b"POST", b"/v1/chat/completions", headers, CHAT)
        for _ in range(4)
    ]
    assert [r.status for r in replies] == [200] * 4
    # the same bytes always land on the same member
    assert len({r.headers["x-spillway-backend"] for r in replies}) == 1


@pytest.mark.parametrize("expect", [b"\x80\xff", b"something-else", b"100-continue"])
@pytest.mark.parametrize(("method", "path", "status"), [
    (b"GET", b"/v1/models", 200), (b"GET", b"/nope", 404), (b"DELETE", b"/v1/quota", 405),
    (b"POST", b"/v1/chat/completions", 200),
])  # fmt: skip
async def test_any_expect_header_is_answered_like_any_request(
    pair: tuple[Running, FakeOpenAI, FakeOpenAI], expect: bytes, method: bytes, path: bytes,
    status: int, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """``Expect: 100-continue`` is honoured; another expectation is ignored (RFC 9110
    allows it), never aiohttp's plain 417 that repeats the header's bytes (a 500 when
    they are not UTF-8)."""
    gw, _, _ = pair
    body = CHAT if method == b"POST" else b""
    reply = await raw_request(port_of(gw.url), method, path, [*BEARER, (b"Expect", expect)], body)
    if expect == b"100-continue":
        assert reply.status == 100  # then the answer
        reply = parse_reply(reply.body)
    assert reply.status == status, reply.body
    assert reply.headers.get("x-request-id")
    if status >= 400:
        assert reply.json()["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
