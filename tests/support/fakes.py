"""Real aiohttp servers that speak OpenAI's chat-completions wire format.

:class:`FakeOpenAI` records every request it receives (path, headers, JSON)
and answers like vLLM / OpenAI: a JSON completion, or SSE chunks ending in
``data: [DONE]`` with a usage chunk only when ``stream_options.include_usage``
is set. Knobs make it fail (status, delay, a stream that breaks midway, no
usage at all) so the gateway's handling can be tested against real sockets.

``GET /metrics`` answers vLLM's Prometheus load gauges (:class:`VllmGauges`;
format from vLLM's metrics docs: ``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` on the V1 engine
(0.8+), ``vllm:gpu_cache_usage_perc`` on V0; labels ``model_name`` and, on
newer versions, ``engine``). ``kill()`` makes the server die like a crashed
process (listener gone, open connections reset); ``revive()`` brings it back on
the same port.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.support.fake_chat_tools import ChatTools
from tests.support.fake_endpoints import CompletionsAndEmbeddings
from tests.support.net import free_port


@dataclass
class Seen:
    path: str
    headers: CIMultiDict[str]
    body: dict[str, Any]
    raw: bytes
    query: dict[str, str]


@dataclass
class Behaviour:
    status: int = 200  # an error status answers OpenAI's error envelope
    fail_times: int | None = None  # only the first N chat requests get ``status``
    error_message: str = "upstream says no"
    retry_after: str | None = None
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    words: int = 8  # completion length (tokens = words)
    break_after: int | None = None  # drop the connection after this many stream chunks
    send_usage: bool = True  # False: never report usage (some servers don't)
    served_model: str | None = None  # the model name to answer with (default: as asked)
    prompt_tokens: int | None = None  # reported prompt tokens (default: counted words)
    extra_response: dict[str, Any] = field(default_factory=dict)
    redirect_to: str | None = None
    completion_text: str | None = None  # /v1/completions answers this (default: w0 w1 ...)
    embeddings_base64: bool = True  # False: /v1/embeddings refuses encoding_format base64
    # an agent's model (tests.support.fake_chat_tools): tool calls, results, stop strings
    tool_calls: bool = False
    tool_name: str | None = None  # the tool to call (default: the chosen or first one)
    tool_input: dict[str, Any] | None = None  # its arguments (default: from its schema)
    reasoning: str | None = None  # answered first as vLLM's ``reasoning``


@dataclass
class VllmGauges:
    """What ``GET /metrics`` reports, in vLLM's exposition format."""

    waiting: float = 0.0
    running: float | None = None  # None: the fake's own in-flight requests
    kv_cache: float = 0.0
    legacy: bool = False  # V0 engine: gpu_cache_usage_perc instead of kv_cache_usage_perc
    engines: int = 1  # data-parallel engines; each reports its share
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    status: int = 200


def vllm_exposition(g: VllmGauges, inflight: int) -> str:
    running = float(inflight) if g.running is None else g.running
    kv_name = "vllm:gpu_cache_usage_perc" if g.legacy else "vllm:kv_cache_usage_perc"
    lines: list[str] = []
    for name, kind, help_, total, split in (
        ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
         running, True),
        ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
         g.waiting, True),
        (kv_name, "gauge", "KV-cache usage. 1 means 100 percent usage.", g.kv_cache, False),
    ):  # fmt: skip
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for e in range(g.engines):
            value = total / g.engines if split else total
            lines.append(f'{name}{{engine="{e}",model_name="{g.model}"}} {value}')
    lines += [
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        f'vllm:time_to_first_token_seconds_bucket{{le="0.1",model_name="{g.model}"}} 4.0',
        f'vllm:time_to_first_token_seconds_count{{model_name="{g.model}"}} 5.0',
    ]
    return "\n".join(lines) + "\n"


def count_words(body: dict[str, Any]) -> int:
    n = 0
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            n += len(c.split())
        elif isinstance(c, list):
            n += sum(len(p.get("text", "").split()) for p in c if isinstance(p, dict))
    return n + 3 * len(body.get("messages", []))


class FakeServer:
    """A real aiohttp server on a free port of 127.0.0.1 (or ``host``), over TLS when
    given an ``ssl_context``; ``await start()`` first."""

    def __init__(
        self, app: web.Application, *, host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.port = free_port()
        self.app = app
        self.host = host
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> Self:
        self._runner = web.AppRunner(self.app, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def play(
    request: web.Request,
    resp: web.StreamResponse,
    events: list[bytes],
    *,
    break_after: int | None,
    chunk_delay: float,
    sent: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """Write prepared SSE events, pausing between them, or drop the connection midway.
    ``sent(i)`` is told of each event written."""
    for i, data in enumerate(events):
        if break_after is not None and i >= break_after:
            assert request.transport is not None
            request.transport.close()
            return resp
        if chunk_delay and i:
            await asyncio.sleep(chunk_delay)
        await resp.write(data)
        if sent is not None:
            sent(i)
    await resp.write_eof()
    return resp


class FakeOpenAI(ChatTools, CompletionsAndEmbeddings, FakeServer):
    """An OpenAI-compatible upstream on a free port; ``await start()`` first.

    Also serves vLLM's ``/v1/completions`` and ``/v1/embeddings``
    (:mod:`tests.support.fake_endpoints`)."""

    def __init__(
        self,
        name: str = "fake",
        behaviour: Behaviour | None = None,
        vllm: VllmGauges | None = None,
        *,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.behaviour = behaviour or Behaviour()
        self.vllm = vllm or VllmGauges()
        self.seen: list[Seen] = []
        self.disconnects: list[float] = []  # when a client went away mid-answer
        self.chats = 0  # chat requests received
        self.generated = 0  # tokens produced (prompt + completion), as a provider bills them
        self.scrapes = 0  # GET /metrics
        self.probes = 0  # GET /v1/models
        super().__init__(self._make_app(), host=host, ssl_context=ssl_context)
        self.inflight = 0

    def _make_app(self) -> web.Application:
        app = web.Application()
        for path in ("/v1/chat/completions", "/openai/v1/chat/completions", "/chat/completions"):
            app.router.add_post(path, self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        return app

    @property
    def url(self) -> str:
        return self.base + "/v1"

    @property
    def metrics_url(self) -> str:
        return self.base + "/metrics"

    async def kill(self) -> None:
        """Die like a crashed server: the port refuses connections, open ones are reset."""
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        if runner.server is not None:  # reset what is open before anything can finish
            for handler in runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
        for site in list(runner.sites):
            await site.stop()
        await runner.cleanup()

    async def revive(self) -> FakeOpenAI:
        """Start again on the same port (after :meth:`kill` or :meth:`stop`)."""
        self.app = self._make_app()
        return await self.start()

    def _record(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(raw)
        self.seen.append(
            Seen(request.path, CIMultiDict(request.headers), body, raw, dict(request.query))
        )
        return body

    async def _play(
        self, request: web.Request, resp: web.StreamResponse, events: list[bytes]
    ) -> web.StreamResponse:
        b = self.behaviour
        return await play(
            request, resp, events, break_after=b.break_after, chunk_delay=b.chunk_delay
        )

    async def _models(self, request: web.Request) -> web.Response:
        self.probes += 1
        return web.json_response({"object": "list", "data": []})

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        text = vllm_exposition(self.vllm, self.inflight)
        return web.Response(
            text=text, status=self.vllm.status, content_type="text/plain", charset="utf-8"
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        self.seen.append(
            Seen(request.path, CIMultiDict(request.headers), body, raw, dict(request.query))
        )
        b = self.behaviour
        if b.redirect_to:
            raise web.HTTPFound(b.redirect_to)
        self.inflight += 1
        self.chats += 1
        try:
            if b.first_byte_delay:
                await asyncio.sleep(b.first_byte_delay)
            failing = b.fail_times is None or self.chats <= b.fail_times
            if b.status != 200 and failing:
                headers = {"Retry-After": b.retry_after} if b.retry_after else None
                return web.json_response(
                    {"error": {"message": b.error_message, "type": "invalid_request_error"
                               if b.status < 500 else "server_error", "param": None,
                               "code": None}},
                    status=b.status, headers=headers,
                )  # fmt: skip
            if body.get("stream"):
                return await self._stream(request, body)
            doc = self._completion(body)
            self.generated += self._usage(body, self._limit(body))["total_tokens"]
            return web.json_response(doc)
        except asyncio.CancelledError:
            self.disconnects.append(time.monotonic())
            raise
        finally:
            self.inflight -= 1

    def _model(self, body: dict[str, Any]) -> str:
        return self.behaviour.served_model or str(body.get("model"))

    def _limit(self, body: dict[str, Any]) -> int:
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        return min(self.behaviour.words, int(cap)) if cap else self.behaviour.words

    def _usage(self, body: dict[str, Any], completion: int) -> dict[str, int]:
        prompt = self.behaviour.prompt_tokens
        prompt = count_words(body) if prompt is None else prompt
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}  # fmt: skip

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        n = self._limit(body)
        if self.behaviour.tool_calls or self.behaviour.reasoning:
            base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": self._model(body)}
            doc = self.tool_completion(body, n, base)
            if self.behaviour.send_usage:
                doc["usage"] = self._usage(body, n)
            return doc
        text = " ".join(f"w{i}" for i in range(n))
        doc: dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": self._model(body),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                     "refusal": None},
                         "logprobs": None, "finish_reason": "length"
                         if n < self.behaviour.words else "stop"}],
        }  # fmt: skip
        if self.behaviour.send_usage:
            doc["usage"] = self._usage(body, n)
        doc.update(self.behaviour.extra_response)
        return doc

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        b = self.behaviour
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self._model(body)}  # fmt: skip
        n = self._limit(body)

        def ev(obj: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        if b.tool_calls or b.reasoning:
            chunks = self.tool_chunks(body, n, base)
        else:
            chunks = [ev({**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                      "content": ""},
                                               "finish_reason": None}]})]  # fmt: skip
            for i in range(n):
                chunks.append(ev({**base, "choices": [{"index": 0,
                                                       "delta": {"content": f" w{i}"},
                                                       "finish_reason": None}]}))  # fmt: skip
            chunks.append(ev({**base, "choices": [{"index": 0, "delta": {},
                                                   "finish_reason": "stop"}]}))  # fmt: skip
        opts = body.get("stream_options") or {}
        if b.send_usage and opts.get("include_usage"):
            chunks.append(ev({**base, "choices": [], "usage": self._usage(body, n)}))
        chunks.append(b"data: [DONE]\n\n")
        self.generated += self._usage(body, 0)["prompt_tokens"]

        def sent(i: int) -> None:
            if 1 <= i <= n:  # a content chunk: one token
                self.generated += 1

        return await play(
            request, resp, chunks, break_after=b.break_after, chunk_delay=b.chunk_delay,
            sent=sent,
        )  # fmt: skip
