"""The plug-in point for client APIs that backends do not speak: a codec's bridge.

A toy client API ("shout": ``{"model", "text"}`` in, ``{"shout": TEXT}`` out)
that no backend has reaches an OpenAI-compatible backend through a bridge to
chat completions, on the same walk: routing, quotas settled on the reported
usage, streams translated chunk by chunk, metrics under its own endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import BaseModel

from router import handlers
from router.app import create_app, make_runner
from router.contract import ChatCompletionRequest
from router.inbound.base import ClientCall, Codec, validate
from router.keys import GATEWAY
from tests.conftest import DEMO_KEY
from tests.support.fakes import FakeOpenAI
from tests.support.gateway import make_config
from tests.support.metrics import value
from tests.support.net import free_port


class ShoutRequest(BaseModel):
    model: str
    text: str
    stream: bool = False


class ShoutAnswers:
    def body(self, data: bytes) -> bytes:
        doc = orjson.loads(data)
        return orjson.dumps({"shout": doc["choices"][0]["message"]["content"].upper(),
                             "model": doc["model"]})  # fmt: skip

    def chunk(self, data: bytes) -> bytes:
        out = b""
        for event in data.split(b"\n\n"):
            if event.startswith(b"data: {"):
                doc = orjson.loads(event[6:])
                for choice in doc.get("choices") or ():
                    text = choice["delta"].get("content")
                    if text:
                        out += b"data: " + text.upper().encode() + b"\n\n"
        return out

    def finish(self) -> bytes:
        return b"data: END\n\n"


class ShoutToChat:
    def request(self, call: ClientCall) -> tuple[Any, bytes]:
        req: ShoutRequest = call.request
        doc: dict[str, Any] = {"model": req.model,
                               "messages": [{"role": "user", "content": req.text}]}  # fmt: skip
        if req.stream:
            doc["stream"] = True
        raw = orjson.dumps(doc)
        return ChatCompletionRequest.model_validate_json(raw), raw

    def answers(self, call: ClientCall) -> ShoutAnswers:
        return ShoutAnswers()


class ShoutCodec(Codec):
    endpoint = "shout"
    api = "shout"
    path = "/v1/shout"
    bridges = {"chat": ShoutToChat()}

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        req, doc = validate(ShoutRequest, raw, model)
        return ClientCall(
            codec=self, request=req, raw=raw, doc=doc, model=req.model, stream=req.stream,
            max_output=None, outputs=1, prompt_bound=len(raw), estimate=lambda: 1,
        )  # fmt: skip


@pytest.fixture
async def gateway(upstream: FakeOpenAI) -> AsyncIterator[str]:
    cfg = make_config({
        "backends": {"gpu": {"provider": "openai", "url": upstream.url}},
        "pools": {"local": {"members": [{"backend": "gpu", "model": "llama"}]}},
        "models": {"chat": {"routes": [{"pools": ["local"]}]}},
        "teams": {"t": {"budgets": [{"tokens_per_day": 100000}]}},
        "keys": [{"id": "k", "team": "t", "key": DEMO_KEY}],
    })  # fmt: skip
    app = create_app(cfg)
    app.router.add_post("/v1/shout", handlers.endpoint("shout"))
    runner = make_runner(app, cfg)
    await runner.setup()
    app[GATEWAY].proxy.codecs["shout"] = ShoutCodec()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_bridged_api_on_the_same_walk(gateway: str, upstream: FakeOpenAI) -> None:
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway + "/v1/shout", headers=headers,
                          json={"model": "chat", "text": "hi there"}) as r:  # fmt: skip
            assert r.status == 200
            assert await r.json() == {"shout": "W0 W1 W2 W3 W4 W5 W6 W7", "model": "chat"}
        async with s.post(gateway + "/v1/shout", headers=headers,
                          json={"model": "chat", "text": "hi", "stream": True}) as r:  # fmt: skip
            events = (await r.read()).split(b"\n\n")
        assert events[:2] == [b"data:  W0", b"data:  W1"] and events[-2] == b"data: END"
        # the backend got chat completions, asked for usage for the bridge's sake
        assert upstream.seen[0].path == upstream.seen[1].path == "/v1/chat/completions"
        assert upstream.seen[0].body["messages"] == [{"role": "user", "content": "hi there"}]
        assert upstream.seen[1].body["stream_options"] == {"include_usage": True}
        async with s.get(gateway + "/v1/quota", headers=headers) as r:
            used = (await r.json())["budgets"][0]["used"]
        assert used == (3 + 2 + 8) + (3 + 1 + 8)  # the usage the backend reported
        async with s.post(gateway + "/v1/shout", headers=headers, json={"model": "chat"}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "text"
        async with s.get(gateway + "/metrics") as r:
            text = await r.text()
    assert value(text, "spillway_requests_total", endpoint="shout", status_class="2xx") == 2
