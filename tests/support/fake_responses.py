"""Fake models that call tools, as real aiohttp servers, in two wire formats.

Both follow one :class:`Script`: when the request offers tools the script names
and its last input is not a tool result, the model calls the first such tool
with the scripted arguments (streamed in fragments); after tool results it
answers ``Result: <the results>``; otherwise it answers the script's text.

* :class:`FakeToolChat` speaks vLLM's chat completions (``/v1/chat/completions``):
  ``tool_calls`` with ``finish_reason: tool_calls``, a usage chunk when
  ``stream_options.include_usage`` is set, ``data: [DONE]``.
* :class:`FakeResponses` speaks OpenAI's Responses API (``POST /v1/responses``,
  and Azure's ``/openai/v1/responses``): the Response object, or the typed
  events with ``event:`` lines and ``sequence_number``, usage in
  ``response.completed``. Like OpenAI it refuses a parameter it does not know
  (400 ``unknown_parameter``) and ``previous_response_id`` (it keeps nothing);
  ``break_after`` drops the connection midway through a stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from openai.types.responses.response_create_params import ResponseCreateParamsBase

from tests.support.fakes import FakeServer, Seen

KNOWN = set(ResponseCreateParamsBase.__annotations__) | {"stream", "client_metadata"}


@dataclass
class Script:
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # tool -> its arguments
    text: str = "Hello from the model"
    reasoning: str | None = None  # streamed before the answer, when set


def _words(node: Any) -> int:
    if isinstance(node, str):
        return len(node.split())
    if isinstance(node, list):
        return sum(_words(n) for n in node)
    if isinstance(node, dict):
        return sum(_words(v) for k, v in node.items() if k in ("text", "content", "output"))
    return 0


def _split(text: str, parts: int = 3) -> list[str]:
    step = max(1, len(text) // parts)
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


class _Recording(FakeServer):
    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.seen: list[Seen] = []
        super().__init__(self._app())

    def _app(self) -> web.Application:
        raise NotImplementedError

    async def _read(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        body: dict[str, Any] = orjson.loads(raw)
        self.seen.append(
            Seen(request.path, CIMultiDict(request.headers), body, raw, dict(request.query))
        )
        return body

    def _plan(self, tools: list[str], results: list[str] | None) -> tuple[str, str] | str:
        """(tool, arguments) to call, or the text to answer."""
        if results is not None:
            return "Result: " + "; ".join(results)
        for name in tools:
            if name in self.script.calls:
                return name, orjson.dumps(self.script.calls[name]).decode()
        return self.script.text

    @property
    def url(self) -> str:
        return self.base + "/v1"


class FakeToolChat(_Recording):
    """vLLM's chat completions, with tool calls."""

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        msgs = body["messages"]
        tools = [t["function"]["name"] for t in body.get("tools") or ()]
        results = None
        if msgs[-1]["role"] == "tool":
            tail: list[str] = []
            for m in reversed(msgs):
                if m["role"] != "tool":
                    break
                tail.insert(0, m["content"] if isinstance(m["content"], str) else str(m["content"]))
            results = tail
        plan = self._plan(tools, results)
        prompt = _words(msgs) + 3 * len(msgs)
        created = int(time.time())
        base = {"id": "chatcmpl-tools", "created": created, "model": body["model"]}
        if isinstance(plan, tuple):
            name, args = plan
            completion = max(1, len(args) // 4)
            finish = "tool_calls"
        else:
            completion, finish = len(plan.split()), "stop"
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None}
            if isinstance(plan, tuple):
                message["tool_calls"] = [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                ]
            else:
                message["content"] = plan
            if self.script.reasoning:
                message["reasoning_content"] = self.script.reasoning
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "usage": usage,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await send({"role": "assistant", "content": ""})
        if self.script.reasoning:
            for piece in _split(self.script.reasoning):
                await send({"reasoning_content": piece})
        if isinstance(plan, tuple):
            await send(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in _split(args):
                await send({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        else:
            for i, word in enumerate(plan.split()):
                await send({"content": word if i == 0 else " " + word})
        await send({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


class FakeResponses(_Recording):
    """OpenAI's Responses API."""

    def __init__(self, script: Script | None = None) -> None:
        super().__init__(script)
        self.n = 0
        self.break_after: int | None = None  # drop the connection after this many events

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        for path in ("/v1/responses", "/openai/v1/responses"):
            app.router.add_post(path, self._responses)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    @staticmethod
    def _error(message: str, param: str | None, code: str) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": param,
                    "code": code,
                }
            },
            status=400,
        )

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        unknown = sorted(set(body) - KNOWN)
        if unknown:
            return self._error(
                f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter"
            )
        if body.get("previous_response_id"):
            rid = body["previous_response_id"]
            return self._error(
                f"Previous response with id '{rid}' not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        items = body["input"]
        if isinstance(items, str):
            items = [{"type": "message", "role": "user", "content": items}]
        results = None
        if items and items[-1].get("type") == "function_call_output":
            results = []
            for item in reversed(items):
                if item.get("type") != "function_call_output":
                    break
                results.insert(0, str(item["output"]))
        tools = [t["name"] for t in body.get("tools") or () if t.get("type") == "function"]
        plan = self._plan(tools, results)
        self.n += 1
        rid, created = f"resp_fake{self.n:04d}", time.time()
        prompt = _words(items) + _words(body.get("instructions") or "")
        shell = {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": "in_progress",
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"],
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": body.get("reasoning"),
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "metadata": body.get("metadata") or {},
        }
        if isinstance(plan, tuple):
            name, args = plan
            item: dict[str, Any] = {
                "id": f"fc_{self.n}",
                "type": "function_call",
                "status": "completed",
                "call_id": f"call_{self.n}",
                "name": name,
                "arguments": args,
            }
            completion = max(1, len(args) // 4)
        else:
            item = {
                "id": f"msg_{self.n}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": plan, "annotations": [], "logprobs": []}
                ],
            }
            completion = len(plan.split())
        done = {
            **shell,
            "status": "completed",
            "output": [item],
            "completed_at": time.time(),
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            },
        }
        if not body.get("stream"):
            return web.json_response(done)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        seq = 0

        async def ev(kind: str, **fields: Any) -> None:
            nonlocal seq
            if self.break_after is not None and seq >= self.break_after:
                assert request.transport is not None
                request.transport.close()  # like a crashed server, midway
                raise ConnectionResetError
            data = orjson.dumps({"type": kind, "sequence_number": seq, **fields})
            seq += 1
            await resp.write(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")

        await ev("response.created", response=shell)
        await ev("response.in_progress", response=shell)
        if item["type"] == "function_call":
            await ev(
                "response.output_item.added",
                output_index=0,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for piece in _split(item["arguments"]):
                await ev(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=0,
                    delta=piece,
                )
            await ev(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=0,
                arguments=item["arguments"],
            )
        else:
            text = item["content"][0]["text"]
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            await ev(
                "response.output_item.added",
                output_index=0,
                item={**item, "status": "in_progress", "content": []},
            )
            await ev(
                "response.content_part.added",
                item_id=item["id"],
                output_index=0,
                content_index=0,
                part=empty,
            )
            for i, word in enumerate(text.split()):
                await ev(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=0,
                    content_index=0,
                    delta=word if i == 0 else " " + word,
                    logprobs=[],
                )
            await ev(
                "response.output_text.done",
                item_id=item["id"],
                output_index=0,
                content_index=0,
                text=text,
                logprobs=[],
            )
            await ev(
                "response.content_part.done",
                item_id=item["id"],
                output_index=0,
                content_index=0,
                part=item["content"][0],
            )
        await ev("response.output_item.done", output_index=0, item=item)
        await ev("response.completed", response=done)
        await resp.write_eof()
        return resp
