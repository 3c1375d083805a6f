"""vLLM's ``/v1/completions`` and ``/v1/embeddings`` for :class:`tests.support.fakes.FakeOpenAI`.

Wire format from vLLM's ``CompletionRequest``/``CompletionResponse`` and
``EmbeddingCompletionRequest``/``EmbeddingResponse``
(vllm/entrypoints/openai/completion/protocol.py, vllm/entrypoints/pooling/embed/
protocol.py) and OpenAI's API reference:

* completions: ``text_completion`` objects, ``n`` choices per prompt (index
  ``prompt * n + i``), ``echo`` prepends the prompt, ``logprobs`` (an integer)
  adds the legacy logprobs object, streams end with a usage chunk when
  ``stream_options.include_usage`` is set, then ``[DONE]``. Like vLLM, a
  non-null ``suffix`` is refused: 400 "suffix is not currently supported".
* embeddings: ``input`` as a string, strings, token ids or token-id lists; a
  deterministic unit vector per input (``dimensions``, else 8 values);
  ``encoding_format`` ``base64`` is little-endian float32, unless
  ``Behaviour.embeddings_base64`` is off (a server that refuses it).

Usage counts whitespace-separated words, token ids one each.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from tests.support.fakes import Behaviour


def ev(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _prompts(value: Any) -> tuple[list[str], int]:
    """Prompts (or inputs) as text, and their token count."""
    if isinstance(value, str):
        return [value], len(value.split())
    if value and isinstance(value[0], int):
        return [" ".join(map(str, value))], len(value)
    texts, tokens = [], 0
    for item in value or []:
        if isinstance(item, str):
            texts.append(item)
            tokens += len(item.split())
        else:
            texts.append(" ".join(map(str, item)))
            tokens += len(item)
    return texts, tokens


def vector(text: str, dims: int) -> list[float]:
    raw = b""
    while len(raw) < dims:
        raw += hashlib.sha256(raw + text.encode()).digest()
    values = [b / 127.5 - 1 for b in raw[:dims]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def vllm_error(message: str, status: int = 400) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "BadRequestError", "param": None,
                   "code": status}}, status=status,
    )  # fmt: skip


class CompletionsAndEmbeddings:
    """Handlers mixed into the fake vLLM server."""

    behaviour: Behaviour
    inflight: int

    def _record(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        raise NotImplementedError

    async def _play(
        self, request: web.Request, resp: web.StreamResponse, events: list[bytes]
    ) -> web.StreamResponse:
        raise NotImplementedError

    async def _failure(self) -> web.Response | None:
        b = self.behaviour
        if b.first_byte_delay:
            await asyncio.sleep(b.first_byte_delay)
        if b.status == 200:
            return None
        headers = {"Retry-After": b.retry_after} if b.retry_after else None
        return web.json_response(
            {"error": {"message": b.error_message, "type": "server_error", "param": None,
                       "code": b.status}}, status=b.status, headers=headers,
        )  # fmt: skip

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = self._record(request, await request.read())
        failed = await self._failure()
        if failed is not None:
            return failed
        if body.get("suffix") is not None:
            return vllm_error("suffix is not currently supported")
        b = self.behaviour
        texts, prompt_tokens = _prompts(body.get("prompt"))
        cap = body.get("max_tokens")
        limit = 16 if cap is None else int(cap)
        words = (b.completion_text.split(" ") if b.completion_text is not None
                 else [f"w{i}" for i in range(b.words)])  # fmt: skip
        out = words[:limit]
        finish = "length" if len(words) > limit else "stop"
        n = int(body.get("n") or 1)
        model = b.served_model or str(body.get("model"))
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": model}  # fmt: skip
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(out) * n * len(texts),
                 "total_tokens": prompt_tokens + len(out) * n * len(texts)}  # fmt: skip
        self.inflight += 1
        try:
            if body.get("stream"):
                return await self._stream_completion(request, body, base, texts, n, out, finish,
                                                     usage)  # fmt: skip
            choices = []
            for p, text in enumerate(texts):
                for i in range(n):
                    choice: dict[str, Any] = {
                        "index": p * n + i, "finish_reason": finish, "stop_reason": None,
                        "text": (text if body.get("echo") else "") + " ".join(out),
                        "logprobs": None,
                    }  # fmt: skip
                    if body.get("logprobs") is not None:
                        choice["logprobs"] = {
                            "text_offset": list(range(len(out))),
                            "token_logprobs": [-0.5] * len(out), "tokens": out,
                            "top_logprobs": [{w: -0.5} for w in out],
                        }  # fmt: skip
                    choices.append(choice)
            return web.json_response({**base, "choices": choices, "usage": usage})
        finally:
            self.inflight -= 1

    async def _stream_completion(
        self, request: web.Request, body: dict[str, Any], base: dict[str, Any],
        texts: list[str], n: int, out: list[str], finish: str, usage: dict[str, int],
    ) -> web.StreamResponse:  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events: list[bytes] = []
        for index in range(len(texts) * n):
            for j, word in enumerate(out):
                text = word if j == 0 else " " + word
                events.append(ev({**base, "choices": [
                    {"index": index, "text": text, "logprobs": None, "finish_reason": None}
                ]}))  # fmt: skip
            events.append(ev({**base, "choices": [
                {"index": index, "text": "", "logprobs": None, "finish_reason": finish}
            ]}))  # fmt: skip
        opts = body.get("stream_options") or {}
        if self.behaviour.send_usage and opts.get("include_usage"):
            events.append(ev({**base, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return await self._play(request, resp, events)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = self._record(request, await request.read())
        failed = await self._failure()
        if failed is not None:
            return failed
        b = self.behaviour
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64") or (fmt == "base64" and not b.embeddings_base64):
            return vllm_error(f"encoding_format {fmt!r} is not supported")
        if "input" not in body:
            return vllm_error("input: Field required")
        texts, tokens = _prompts(body["input"])
        dims = int(body.get("dimensions") or 8)
        data: list[dict[str, Any]] = []
        for i, text in enumerate(texts):
            values = vector(text, dims)
            embedding: Any = values
            if fmt == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *values)).decode()
            data.append({"index": i, "object": "embedding", "embedding": embedding})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}
        if b.prompt_tokens is not None:
            usage["prompt_tokens"] = usage["total_tokens"] = b.prompt_tokens
        doc: dict[str, Any] = {
            "id": "embd-fake", "object": "list", "created": int(time.time()),
            "model": b.served_model or str(body.get("model")), "data": data,
        }  # fmt: skip
        if b.send_usage:
            doc["usage"] = usage
        return web.json_response(doc)
