"""What a provider says when it fails: never its key, never the client's fault.

* The backend's key is masked in every upstream error passed on, on the decoded
  text: JSON-escaped (``\\/``, ``\\uXXXX``) and in-band stream errors included,
  for OpenAI-compatible, Azure and Anthropic backends.
* Credentials from a file or the environment are read again, on an interval and
  when the provider refuses them.
* All of it on every endpoint (chat completions, completions, embeddings): a
  provider's refusal is a 502 that ejects the member and fails over.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.fake_anthropic import AnthropicBehaviour, FakeAnthropic
from tests.support.fake_azure import AzureBehaviour, FakeAzure
from tests.support.fakes import FakeOpenAI
from tests.support.fleet import KEY as CLIENT_KEY
from tests.support.fleet import fleet_config, members, post, sse_events
from tests.support.gateway import Running, start_gateway
from tests.support.raw_upstream import RawUpstream, chunk, response

KEY = "sk-live/Kq7+zz/0123456789abcdef"


def escaped(text: str) -> str:
    """``text`` as a JSON string body, with every ``/`` escaped and ``sk`` as \\u escapes."""
    return text.replace("/", "\\/").replace("sk-", "\\u0073\\u006b-")


def quoting(status: str, body: str, *, stream: bool = False) -> Any:
    """A raw upstream that answers every request with ``body`` (a stream when asked)."""

    async def handler(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            if stream:
                await srv.write(w, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
                await srv.write(w, chunk(body.encode()) + b"0\r\n\r\n")
            else:
                await srv.write(w, response(body.encode(), status=status))

    return handler


async def gateway_for(backend: dict[str, Any], model: str = "m") -> Running:
    return await start_gateway(fleet_config(
        {"up": backend}, {"p": {"members": members("up", model=model)}},
        health={"failure_threshold": 1000},
    ))  # fmt: skip


def assert_masked(text: str) -> None:
    assert KEY not in text and "Kq7+zz" not in text, text
    assert "***" in text, text


CHUNK = ('data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
         '"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n')  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "status", "body", "stream"),
    [
        ("openai", "400 Bad Request",
         '{"error":{"message":"Key ' + escaped(KEY) + ' may not set top_k","type":'
         '"invalid_request_error","param":null,"code":null}}', False),
        ("openai", "500 Internal Server Error", "upstream broke for key " + KEY, False),
        ("openai", "200 OK", CHUNK + 'data: {"error":{"message":"quota of ' + escaped(KEY)
         + ' exceeded","type":"server_error"}}\n\ndata: [DONE]\n\n', True),
        ("azure", "400 Bad Request",
         '{"error":{"code":"content_filter","message":"api-key ' + escaped(KEY) + '"}}', False),
        ("anthropic", "400 Bad Request",
         '{"type":"error","error":{"type":"invalid_request_error","message":"key '
         + escaped(KEY) + '"}}', False),
        ("anthropic", "200 OK",
         'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
         '"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
         'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
         '"message":"retry later, ' + escaped(KEY) + '"}}\n\n', True),
    ],
)  # fmt: skip
async def test_the_key_never_reaches_the_client(
    provider: str, status: str, body: str, stream: bool
) -> None:
    raw = await RawUpstream(quoting(status, body, stream=stream)).start()
    backend: dict[str, Any] = {"provider": provider, "url": raw.url, "api_key": KEY}
    if provider == "azure":
        backend["url"] = raw.url.removesuffix("/v1")
    gw = await gateway_for(backend)
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw, stream=stream)
        text = r.body.decode()
        if stream:
            events = sse_events(r.body)
            assert events[-1] == "[DONE]" and "error" in events[-2], text
            text = orjson.dumps(events).decode()  # decoded: no escape hides the key
        else:
            assert r.status >= 400
            text = orjson.dumps(r.json()).decode()
        assert_masked(text)
        assert KEY.encode() in raw.requests[0]  # the key was sent upstream, as it should be
    finally:
        await gw.stop()
        await raw.stop()


@pytest.mark.parametrize(
    ("status", "body", "stream"),
    [
        # vLLM's in-band error: no "error" key, the object says it
        ("200 OK", CHUNK + 'data: {"object":"error","message":"bad key ' + escaped(KEY)
         + '","type":"BadRequestError","param":null,"code":400}\n\ndata: [DONE]\n\n', True),
        # the member name itself escaped
        ("200 OK", CHUNK + 'data: {"\\u0065rror":{"message":"bad key ' + escaped(KEY)
         + '"}}\n\ndata: [DONE]\n\n', True),
        # an error event whose data is plain text, the key raw and escaped
        ("200 OK", CHUNK + "event: error\ndata: failed for " + KEY + " and " + escaped(KEY)
         + "\n\ndata: [DONE]\n\n", True),
        # CRLF framing
        ("200 OK", (CHUNK + 'data: {"error":{"message":"key ' + escaped(KEY)
                    + '"}}\n\ndata: [DONE]\n\n').replace("\n", "\r\n"), True),
        # an error answered with a 200
        ("200 OK", '{"error":{"message":"key ' + escaped(KEY) + '","type":"server_error"}}',
         False),
        # a body that is not JSON but quotes the key JSON-escaped
        ("500 Internal Server Error", 'oops {"message": "key ' + escaped(KEY) + '"', False),
        # a message that is an object, a FastAPI detail list
        ("400 Bad Request", '{"error":{"message":{"detail":"key ' + escaped(KEY) + '"}}}', False),
        ("422 Unprocessable Entity", '{"detail":[{"msg":"key ' + escaped(KEY) + '"}]}', False),
    ],
)  # fmt: skip
async def test_the_key_is_masked_however_the_error_is_shaped(
    status: str, body: str, stream: bool
) -> None:
    """Whatever the shape of the error, the answer holds the key in no form: neither
    raw, nor JSON-escaped, nor once decoded."""
    raw = await RawUpstream(quoting(status, body, stream=stream)).start()
    gw = await gateway_for({"provider": "openai", "url": raw.url, "api_key": KEY})
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw, stream=stream)
        text = r.body.decode()
        assert "Kq7+zz" not in text and "Kq7\\u002b" not in text.lower(), text
        if stream:
            assert r.status == 200 and text.rstrip().endswith("data: [DONE]"), text
            decoded = orjson.dumps([orjson.loads(b[5:]) for b in r.body.split(b"\n")
                                    if b.startswith(b"data: {")]).decode()  # fmt: skip
        else:
            assert r.status >= 400, text  # an error, even when answered with a 200
            decoded = orjson.dumps(r.json()).decode()
        assert KEY not in decoded and "Kq7+zz" not in decoded, decoded
        assert "***" in text, text
    finally:
        await gw.stop()
        await raw.stop()


async def test_a_key_file_is_read_again_after_a_refusal(tmp_path: Path) -> None:
    """The provider rotated the key and the file was rewritten: the 401 makes the
    gateway read the file again and retry once with the new key; no ejection."""
    key_file = tmp_path / "anthropic.key"
    key_file.write_text("sk-ant-old-key-1\n")
    fake = await FakeAnthropic(AnthropicBehaviour(api_key="sk-ant-old-key-1")).start()
    backend = {"provider": "anthropic", "url": fake.url, "api_key_file": str(key_file),
               "credential_refresh_seconds": 3600}  # fmt: skip
    gw = await gateway_for(backend, model="claude-sonnet-4-5")
    try:
        async with aiohttp.ClientSession() as s:
            assert (await post(s, gw, max_tokens=5)).status == 200
            fake.behaviour.api_key = "sk-ant-new-key-2"
            key_file.write_text("sk-ant-new-key-2\n")
            r = await post(s, gw, max_tokens=5)
            assert r.status == 200, r.body
        assert fake.refused == 1
        assert gw.gateway.runtime.states["up"].healthy
        assert fake.seen[-1].headers["x-api-key"] == "sk-ant-new-key-2"
    finally:
        await gw.stop()
        await fake.stop()


async def test_an_entra_token_from_the_environment_is_renewed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPILLWAY_TEST_ENTRA_TOKEN", "entra-token-one")
    fake = await FakeAzure(AzureBehaviour(api_key=None, token="entra-token-one")).start()
    gw = await gateway_for({"provider": "azure", "url": fake.url,
                            "token_env": "SPILLWAY_TEST_ENTRA_TOKEN",
                            "credential_refresh_seconds": 0.05}, model="gpt4o-prod")  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            assert (await post(s, gw)).status == 200
            # the token expired and its renewer set a new one: read on the interval
            fake.behaviour.token = "entra-token-two"
            monkeypatch.setenv("SPILLWAY_TEST_ENTRA_TOKEN", "entra-token-two")
            await asyncio.sleep(0.3)
            r = await post(s, gw)
            assert r.status == 200, r.body
        assert fake.seen[-1].headers["Authorization"] == "Bearer entra-token-two"
    finally:
        await gw.stop()
        await fake.stop()


async def test_a_revoked_key_fails_over_to_the_next_pool() -> None:
    bad = await FakeAzure(AzureBehaviour(api_key="azure-good-key")).start()
    good = await FakeAzure().start()
    gw = await start_gateway(fleet_config(
        {"revoked": {"provider": "azure", "url": bad.url, "api_key": "azure-revoked-key"},
         "spare": {"provider": "azure", "url": good.url, "api_key": "azure-test-key"}},
        {"first": {"members": members("revoked", model="gpt4o-prod")},
         "second": {"members": members("spare", model="gpt4o-prod")}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            replies = [await post(s, gw) for _ in range(3)]
        assert [r.status for r in replies] == [200, 200, 200]
        assert {r.pool for r in replies} == {"second"}
        assert not gw.gateway.runtime.states["revoked"].healthy
    finally:
        await gw.stop()
        await bad.stop()
        await good.stop()


async def test_a_probe_refused_with_401_keeps_the_member_out() -> None:
    """After the cooldown the probe (with the same credential) is refused too: the
    member stays out instead of coming back on probation."""

    async def refuses(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            await srv.write(w, response(b'{"error":{"message":"invalid key"}}',
                                        status="401 Unauthorized"))  # fmt: skip

    raw = await RawUpstream(refuses).start()
    gw = await start_gateway(fleet_config(
        {"up": {"provider": "openai", "url": raw.url, "api_key": "sk-revoked-000"}},
        {"p": {"members": members("up")}},
        health={"auth_ejection_seconds": 0.2, "ejection_seconds": 0.2},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw)
        assert r.status == 502 and r.json()["error"]["code"] == "upstream_auth_error"
        state = gw.gateway.runtime.states["up"]
        assert not state.healthy
        for _ in range(100):  # until a probe was made after the cooldown
            if any(req.startswith(b"GET /v1/models") for req in raw.requests):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        assert any(req.startswith(b"GET /v1/models") for req in raw.requests)
        assert not state.healthy
    finally:
        await gw.stop()
        await raw.stop()


async def test_a_missing_credential_file_is_a_502_and_an_error_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = await FakeAnthropic().start()
    missing = tmp_path / "not-there.key"
    gw = await gateway_for({"provider": "anthropic", "url": fake.url,
                            "api_key_file": str(missing)}, model="claude-sonnet-4-5")  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw, max_tokens=5)
        message = r.json()["error"]["message"]
        assert r.status == 502 and "'up'" in message and str(missing) not in message
        assert not fake.seen and fake.refused == 0  # nothing was sent without a key
        assert any(str(missing) in rec.getMessage() for rec in caplog.records
                   if rec.levelname == "ERROR")  # fmt: skip
    finally:
        await gw.stop()
        await fake.stop()


COMPLETION_CHUNK = (
    'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
    '"choices":[{"index":0,"text":"hi","logprobs":null,"finish_reason":null}]}\n\n'
)


def endpoint_config(backends: dict[str, Any], pools: dict[str, Any], endpoint: str,
                    **health: Any) -> dict[str, Any]:  # fmt: skip
    """Model ``chat`` over ``pools``, of the kind ``endpoint`` serves."""
    kind = "embeddings" if endpoint == "embeddings" else "chat"
    models = {"chat": {"kind": kind, "routes": [{"pools": list(pools)}]}}
    return fleet_config(backends, pools, health={"failure_threshold": 1000, **health},
                        models=models)  # fmt: skip


async def send(s: aiohttp.ClientSession, gw: Running, endpoint: str, stream: bool = False) -> Any:
    """One request to ``/v1/{endpoint}`` for model ``chat``: (status, body bytes)."""
    body: dict[str, Any] = {"model": "chat"}
    if endpoint == "chat/completions":
        body["messages"] = [{"role": "user", "content": "hello there"}]
    elif endpoint == "completions":
        body["prompt"] = "hello there"
    else:
        body["input"] = "hello there"
    if stream:
        body["stream"] = True
    async with s.post(f"{gw.url}/v1/{endpoint}", json=body,
                      headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:  # fmt: skip
        return r.status, await r.read(), r.headers.get("x-spillway-pool")


@pytest.mark.parametrize(
    ("provider", "endpoint", "status", "body", "stream"),
    [
        ("openai", "completions", "400 Bad Request",
         '{"error":{"message":"Key ' + escaped(KEY) + ' may not set top_k","type":'
         '"invalid_request_error","param":null,"code":null}}', False),
        ("openai", "completions", "200 OK", COMPLETION_CHUNK + 'data: {"error":{"message":'
         '"quota of ' + escaped(KEY) + ' exceeded","type":"server_error"}}\n\ndata: [DONE]\n\n',
         True),
        ("openai", "embeddings", "500 Internal Server Error", "upstream broke for key " + KEY,
         False),
        ("azure", "embeddings", "400 Bad Request",
         '{"error":{"code":"content_filter","message":"api-key ' + escaped(KEY) + '"}}', False),
        ("azure", "completions", "429 Too Many Requests",
         '{"error":{"code":"429","message":"slow down, ' + escaped(KEY) + '"}}', False),
    ],
)  # fmt: skip
async def test_the_key_never_reaches_the_client_of_any_endpoint(
    provider: str, endpoint: str, status: str, body: str, stream: bool
) -> None:
    raw = await RawUpstream(quoting(status, body, stream=stream)).start()
    url = raw.url.removesuffix("/v1") if provider == "azure" else raw.url
    gw = await start_gateway(endpoint_config(
        {"up": {"provider": provider, "url": url, "api_key": KEY}},
        {"p": {"members": members("up", model="m")}}, endpoint,
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            code, answer, _ = await send(s, gw, endpoint, stream)
        if stream:
            events = sse_events(answer)
            assert code == 200 and events[-1] == "[DONE]" and "error" in events[-2], answer
            text = orjson.dumps(events).decode()  # decoded: no escape hides the key
        else:
            assert code >= 400, answer
            text = orjson.dumps(orjson.loads(answer)).decode()
        assert_masked(text)
        sent = raw.requests[0]
        assert KEY.encode() in sent
        assert sent.split(b" ", 2)[1].split(b"?")[0].endswith(f"/{endpoint}".encode())
    finally:
        await gw.stop()
        await raw.stop()


@pytest.mark.parametrize("endpoint", ["completions", "embeddings"])
async def test_a_refused_key_ejects_and_fails_over_on_every_endpoint(endpoint: str) -> None:
    """401 from the provider: a 502 naming the backend when nowhere else can serve,
    the member out for long, the next pool serving meanwhile."""

    async def refuses(srv: RawUpstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await srv.read_request(r) is not None:
            await srv.write(w, response(b'{"error":{"message":"invalid key sk-revoked-0001"}}',
                                        status="401 Unauthorized"))  # fmt: skip

    raw = await RawUpstream(refuses).start()
    spare = await FakeOpenAI("spare").start()
    backends = {"revoked": {"provider": "openai", "url": raw.url, "api_key": "sk-revoked-0001"},
                "spare": {"provider": "openai", "url": spare.url}}  # fmt: skip
    alone = await start_gateway(endpoint_config(
        backends, {"first": {"members": members("revoked", model="m")}}, endpoint,
    ))  # fmt: skip
    both = await start_gateway(endpoint_config(backends, {
        "first": {"members": members("revoked", model="m")},
        "second": {"members": members("spare", model="m")},
    }, endpoint))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            code, answer, _ = await send(s, alone, endpoint)
            error = orjson.loads(answer)["error"]
            assert code == 502 and error["code"] == "upstream_auth_error", answer
            assert "'revoked'" in error["message"] and "sk-revoked" not in answer.decode()
            replies = [await send(s, both, endpoint) for _ in range(3)]
        assert [(code, pool) for code, _, pool in replies] == [(200, "second")] * 3
        assert not both.gateway.runtime.states["revoked"].healthy
        assert len(raw.requests) == 2  # one refusal per gateway, then the member was out
        assert [seen.path for seen in spare.seen] == [f"/v1/{endpoint}"] * 3
    finally:
        await alone.stop()
        await both.stop()
        await raw.stop()
        await spare.stop()


async def test_an_unknown_deployment_is_a_configuration_error_for_embeddings() -> None:
    fake = await FakeAzure().start()
    gw = await start_gateway(endpoint_config(
        {"up": {"provider": "azure", "url": fake.url, "api_key": "azure-test-key"}},
        {"p": {"members": members("up", model="no-such-deployment")}}, "embeddings",
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            code, answer, _ = await send(s, gw, "embeddings")
        error = orjson.loads(answer)["error"]
        assert code == 502 and error["code"] == "upstream_misconfigured", answer
        assert not gw.gateway.runtime.states["up"].healthy
    finally:
        await gw.stop()
        await fake.stop()


async def test_an_azure_key_file_is_read_again_for_embeddings(tmp_path: Path) -> None:
    key_file = tmp_path / "azure.key"
    key_file.write_text("azure-key-one-0001\n")
    fake = await FakeAzure(AzureBehaviour(api_key="azure-key-one-0001")).start()
    gw = await start_gateway(endpoint_config(
        {"up": {"provider": "azure", "url": fake.url, "api_key_file": str(key_file),
                "credential_refresh_seconds": 3600}},
        {"p": {"members": members("up", model="gpt4o-prod")}}, "embeddings",
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            assert (await send(s, gw, "embeddings"))[0] == 200
            fake.behaviour.api_key = "azure-key-two-0002"
            key_file.write_text("azure-key-two-0002\n")
            code, answer, _ = await send(s, gw, "embeddings")
            assert code == 200, answer
        assert gw.gateway.runtime.states["up"].healthy
        assert fake.seen[-1].headers["api-key"] == "azure-key-two-0002"
        assert fake.seen[-1].path.endswith("/embeddings")
    finally:
        await gw.stop()
        await fake.stop()
