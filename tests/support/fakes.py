"""Real aiohttp servers that speak OpenAI's chat-completions wire format.

:class:`FakeOpenAI` records every request it receives (path, headers, JSON)
and answers like vLLM / OpenAI: a JSON completion, or SSE chunks ending in
``data: [DONE]`` with a usage chunk only when ``stream_options.include_usage``
is set. Knobs make it fail (status, delay, a stream that breaks midway, no
usage at all) so the gateway's handling can be tested against real sockets.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

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


def count_words(body: dict[str, Any]) -> int:
    n = 0
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            n += len(c.split())
        elif isinstance(c, list):
            n += sum(len(p.get("text", "").split()) for p in c if isinstance(p, dict))
    return n + 3 * len(body.get("messages", []))


class FakeOpenAI:
    """An OpenAI-compatible upstream on a free port; ``await start()`` first."""

    def __init__(self, name: str = "fake", behaviour: Behaviour | None = None) -> None:
        self.name = name
        self.behaviour = behaviour or Behaviour()
        self.seen: list[Seen] = []
        self.disconnects: list[float] = []  # when a client went away mid-answer
        self.port = free_port()
        self.app = web.Application()
        for path in ("/v1/chat/completions", "/openai/v1/chat/completions", "/chat/completions"):
            self.app.router.add_post(path, self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self._runner: web.AppRunner | None = None
        self.inflight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        self._runner = web.AppRunner(self.app, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

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
        try:
            if b.first_byte_delay:
                await asyncio.sleep(b.first_byte_delay)
            if b.status != 200:
                headers = {"Retry-After": b.retry_after} if b.retry_after else None
                return web.json_response(
                    {"error": {"message": b.error_message, "type": "invalid_request_error"
                               if b.status < 500 else "server_error", "param": None,
                               "code": None}},
                    status=b.status, headers=headers,
                )  # fmt: skip
            if body.get("stream"):
                return await self._stream(request, body)
            return web.json_response(self._completion(body))
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

        chunks = [ev({**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""},
                                           "finish_reason": None}]})]  # fmt: skip
        for i in range(n):
            chunks.append(ev({**base, "choices": [{"index": 0, "delta": {"content": f" w{i}"},
                                                   "finish_reason": None}]}))  # fmt: skip
        chunks.append(ev({**base, "choices": [{"index": 0, "delta": {},
                                               "finish_reason": "stop"}]}))  # fmt: skip
        opts = body.get("stream_options") or {}
        if b.send_usage and opts.get("include_usage"):
            chunks.append(ev({**base, "choices": [], "usage": self._usage(body, n)}))
        chunks.append(b"data: [DONE]\n\n")
        for i, chunk in enumerate(chunks):
            if b.break_after is not None and i >= b.break_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            if b.chunk_delay and i:
                await asyncio.sleep(b.chunk_delay)
            await resp.write(chunk)
        await resp.write_eof()
        return resp
