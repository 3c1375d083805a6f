"""Fuzzing request bodies against an in-process gateway: never a 5xx, never a traceback.

Hypothesis draws bodies from the shapes of the chat, completions and embeddings
contracts (every known field, with values of the right type or any other JSON,
non-finite numbers and integers beyond any bound), raw byte mutations of valid
bodies, and compressed or mislabelled encodings. The upstream answers whatever it
is sent the way an OpenAI-compatible server does, so any 5xx would be the gateway's.
Bounded: a few hundred examples, no deadline (the machine is shared).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
import zlib
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.contract import ChatCompletionRequest
from router.inbound.contracts import CompletionRequest, EmbeddingRequest
from tests.support.fakes import FakeServer
from tests.support.gateway import Running, start_gateway

KEY = "sk-test-fuzz-0001"
T = TypeVar("T")
SETTINGS = settings(
    max_examples=200, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip


class AnyUpstream(FakeServer):
    """Answers every well-formed request like vLLM: JSON, or SSE when asked to stream;
    a 400 envelope for a body it cannot read."""

    def __init__(self) -> None:
        app = web.Application()
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self._answer)
        super().__init__(app)
        self.served = 0

    @property
    def url(self) -> str:
        return self.base + "/v1"

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            err = {"message": "bad json", "type": "BadRequest", "param": None, "code": 400}
            return web.json_response({"error": err}, status=400)
        self.served += 1
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        model = body.get("model")
        if request.path.endswith("/embeddings"):
            return web.json_response({"object": "list", "model": model, "usage": usage,
                                      "data": [{"object": "embedding", "index": 0,
                                                "embedding": [0.5, -0.25]}]})  # fmt: skip
        chat = request.path.endswith("/chat/completions")
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            if chat else {"index": 0, "text": "ok", "finish_reason": "stop"}
        )  # fmt: skip
        obj = "chat.completion" if chat else "text_completion"
        if body.get("stream") is not True:
            return web.json_response({"id": "x", "object": obj, "created": 1, "model": model,
                                      "choices": [choice], "usage": usage})  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        delta = {"index": 0, "delta": {"content": "ok"}} if chat else {"index": 0, "text": "ok"}
        for doc in ({"id": "x", "object": obj + ".chunk", "created": 1, "model": model,
                     "choices": [delta]},
                    {"id": "x", "object": obj + ".chunk", "created": 1, "model": model,
                     "choices": [], "usage": usage}):  # fmt: skip
            await resp.write(b"data: " + orjson.dumps(doc) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


CONFIG = {
    "server": {"max_body_bytes": 256 * 1024},
    "backends": {"gpu": {"provider": "openai", "url": "{up}"},
                 "cloud": {"provider": "openai", "url": "{up}", "flavour": "openai",
                           "api_key": "sk-cloud-0123456789"}},
    "pools": {
        "local": {"members": [{"backend": "gpu", "model": "llama", "fim": "codellama"}],
                  "max_output_tokens": 64},
        "hosted": {"members": [{"backend": "cloud", "model": "gpt"}],
                   "price": {"input_per_mtok": 1, "output_per_mtok": 2}},
        "vectors": {"members": [{"backend": "gpu", "model": "e5"}]},
    },
    "models": {"chat": {"routes": [{"pools": ["hosted", "local"]}]},
               "embed": {"kind": "embeddings", "routes": [{"pools": ["vectors"]}]}},
    "teams": {"t": {"limits": {"concurrent": 64},
                    "budgets": [{"tokens_per_day": 10**12}, {"usd_per_day": 10**6}]}},
    "keys": [{"id": "k", "team": "t", "key": KEY}],
}  # fmt: skip


class Gateway:
    """The gateway and its upstream on an event loop of their own (a thread), so that
    hypothesis drives plain functions and the test can look at all examples after."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.up, self.gw = self.run(self._start())

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=60)

    async def _start(self) -> tuple[AnyUpstream, Running]:
        up = await AnyUpstream().start()
        cfg = json.loads(json.dumps(CONFIG).replace("{up}", up.url))
        self.session = aiohttp.ClientSession(auto_decompress=False)
        return up, await start_gateway(cfg)

    async def _stop(self) -> None:
        await self.session.close()
        await self.gw.stop()
        await self.up.stop()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def post(self, path: str, data: bytes, headers: dict[str, str] | None = None) -> int:
        return self.run(self._post(path, data, headers or {}))

    async def _post(self, path: str, data: bytes, headers: dict[str, str]) -> int:
        h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers}
        async with self.session.post(self.gw.url + path, data=data, headers=h) as r:
            body = await r.read()
            if r.status >= 400:  # every refusal is an envelope
                err = orjson.loads(body)["error"]
                assert isinstance(err["message"], str) and err["message"], body
            return r.status


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    running = Gateway()
    yield running
    running.close()


# ---------------------------------------------------------------- strategies

EDGE_NUMBERS = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, str(2**63),
    str(2**64), str(-(2**63) - 1), str(2**31), "1e308", "-0", "0.0", "1e-400", "4.9e-324",
]  # fmt: skip
SENTINEL = "~num~"  # "~num~NaN" in a drawn document is written as the literal NaN

edge_numbers = st.sampled_from(EDGE_NUMBERS).map(lambda n: SENTINEL + n)
scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), edge_numbers,
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip
# values a known field may well accept: small counts, probabilities, flags, words
plausible = st.one_of(
    st.integers(min_value=-2, max_value=300), st.floats(min_value=0, max_value=1),
    st.booleans(), st.text(max_size=10), st.sampled_from([2**31 - 1, 2**63 - 1, 2**64 - 1]),
    edge_numbers, st.lists(st.integers(0, 1000), min_size=1, max_size=3),
)  # fmt: skip

ROLES = ["system", "developer", "user", "assistant", "tool", "function", "robot"]
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "file", "video_url"])},
    optional={"text": st.one_of(st.text(max_size=20), json_values),
              "image_url": st.one_of(st.fixed_dictionaries({"url": st.text(max_size=20)}),
                                     json_values)},
)  # fmt: skip
good_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                           "content": st.text(min_size=1, max_size=30)}),
    min_size=1, max_size=3,
)  # fmt: skip
wild_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES)},
                          optional={"content": st.one_of(st.text(max_size=40),
                                                         st.lists(parts, max_size=3),
                                                         json_values),
                                    "name": json_values, "tool_call_id": st.text(max_size=8),
                                    "tool_calls": json_values, "extra": json_values}),
    max_size=3,
)  # fmt: skip
prompts = st.one_of(
    st.text(min_size=1, max_size=30), st.lists(st.text(min_size=1, max_size=10), max_size=4),
    st.lists(st.integers(-5, 2**33), max_size=5), json_values,
)  # fmt: skip
BASES = {
    "/v1/chat/completions": (ChatCompletionRequest, {"model": "chat"}, "messages",
                             st.one_of(good_messages, wild_messages)),
    "/v1/completions": (CompletionRequest, {"model": "chat"}, "prompt", prompts),
    "/v1/embeddings": (EmbeddingRequest, {"model": "embed"}, "input", prompts),
}  # fmt: skip
PATHS = st.sampled_from(sorted(BASES))


@st.composite
def bodies(draw: st.DrawFn, path: str) -> dict[str, Any]:
    """A body of ``path``'s contract: its required fields (mostly well-formed), and a
    few known or unknown fields with plausible or arbitrary values."""
    model, base, key, values = BASES[path]
    doc: dict[str, Any] = dict(base)
    doc[key] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        doc["model"] = draw(st.one_of(st.sampled_from(["nope", "", "embed", "chat"]), json_values))
    names = [*sorted(model.model_fields), "stream_options"]
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        doc[name] = draw(st.one_of(plausible, json_values))
    if draw(st.booleans()):  # an unknown field: forwarded as it is, so anything goes
        doc[draw(st.sampled_from(["foo", "x_extra", "metadata_2"]))] = draw(json_values)
    return doc


def encode(doc: Any) -> bytes:
    """JSON with the drawn edge numbers written as raw literals (NaN, 1e400, ...)."""
    text = json.dumps(doc)
    while (at := text.find('"' + SENTINEL)) >= 0:
        end = text.index('"', at + 1)
        text = text[:at] + text[at + 1 + len(SENTINEL) : end] + text[end + 1 :]
    return text.encode()


# ---------------------------------------------------------------- the checks


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING)
    return caplog


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def test_contract_shaped_bodies(gw: Gateway, quiet: pytest.LogCaptureFixture) -> None:
    seen: Counter[int] = Counter()

    @SETTINGS
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        path = data.draw(PATHS)
        raw = encode(data.draw(bodies(path)))
        if data.draw(st.booleans()):  # Azure's form: the deployment in the path is the model
            name = "embed" if path.endswith("embeddings") else "chat"
            status = gw.post(path.replace("/v1", f"/openai/deployments/{name}"), raw)
        else:
            status = gw.post(path, raw)
        assert status < 500, (path, raw)
        seen[status // 100] += 1

    one()
    no_tracebacks(quiet)
    assert seen[2] >= 20 and seen[4] >= 20, seen  # both served and refused bodies were tried


VALID = {
    "/v1/chat/completions": {"model": "chat", "max_tokens": 5, "temperature": 0.5,
                             "messages": [{"role": "user", "content": "hi there"}]},
    "/v1/completions": {"model": "chat", "prompt": ["a", "b"], "n": 2, "suffix": "z"},
    "/v1/embeddings": {"model": "embed", "input": [[1, 2, 3], [4]], "dimensions": 8},
}  # fmt: skip


def test_mutated_bytes(gw: Gateway, quiet: pytest.LogCaptureFixture) -> None:
    seen: Counter[int] = Counter()

    @SETTINGS
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        path = data.draw(PATHS)
        raw = bytearray(json.dumps(VALID[path]).encode())
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(raw)))
            kind = data.draw(st.sampled_from(["insert", "delete", "replace", "number", "cut"]))
            if kind == "insert":
                raw[at:at] = data.draw(st.binary(min_size=1, max_size=6))
            elif kind == "delete":
                del raw[at : at + data.draw(st.integers(1, 8))]
            elif kind == "replace" and at < len(raw):
                raw[at] = data.draw(st.integers(0, 255))
            elif kind == "number":
                raw[at:at] = data.draw(st.sampled_from(EDGE_NUMBERS)).encode()
            else:
                del raw[at:]
        status = gw.post(path, bytes(raw))
        assert status < 500, (path, bytes(raw))
        seen[status // 100] += 1

    one()
    no_tracebacks(quiet)
    assert seen[4] >= 20, seen


LABELS = ["gzip", "deflate", "x-gzip", "identity", "br", "zstd", "gzip, gzip", "GZip", "",
          "deflate, br", "compress", ",", "gzip;q=1"]  # fmt: skip


def test_encodings(gw: Gateway, quiet: pytest.LogCaptureFixture) -> None:
    seen: Counter[int] = Counter()

    @SETTINGS
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        path = data.draw(PATHS)
        raw = data.draw(st.one_of(st.just(json.dumps(VALID[path]).encode()),
                                  bodies(path).map(encode)))  # fmt: skip
        coding = data.draw(st.sampled_from(["gzip", "deflate", "raw-deflate", "none"]))
        if coding == "gzip":
            raw = gzip.compress(raw)
        elif coding == "deflate":
            raw = zlib.compress(raw)
        elif coding == "raw-deflate":
            c = zlib.compressobj(wbits=-15)
            raw = c.compress(raw) + c.flush()
        if data.draw(st.integers(0, 2)) == 0:  # damage it
            at = data.draw(st.integers(0, max(0, len(raw) - 1)))
            raw = raw[:at] + data.draw(st.binary(max_size=4)) + raw[at + 1 :]
        honest = {"gzip": "gzip", "deflate": "deflate", "raw-deflate": "deflate"}
        label = honest.get(coding, "identity")
        if data.draw(st.booleans()):  # or any label at all
            label = data.draw(st.sampled_from(LABELS))
        status = gw.post(path, raw, {"Content-Encoding": label})
        assert status < 500, (path, label, raw[:64])
        seen[status // 100] += 1

    one()
    no_tracebacks(quiet)
    assert seen[2] >= 10 and seen[4] >= 10, seen
