"""Tool calls, reasoning and ``/tokenize`` for :class:`tests.support.fakes.FakeOpenAI`.

Wire format as vLLM serves it (vllm/entrypoints/openai/chat_completion and
serve/tokenize): with ``Behaviour.tool_calls`` on, a request with tools (and a
``tool_choice`` other than ``none``) whose last message is not a tool result is
answered with a call of the named, chosen or first tool, its arguments built
from the schema (or ``Behaviour.tool_input``) and streamed in small fragments,
``finish_reason: "tool_calls"``; after tool results the answer is ``Result:
<the results>``. ``Behaviour.reasoning`` is answered first as ``reasoning``
(vLLM's reasoning parsers). A stop string found in the answer ends it there,
``finish_reason: "stop"`` with vLLM's ``stop_reason`` naming it.

``POST /tokenize`` (at the root, as vLLM serves it) counts the words of the
chat ``messages`` (the chat fake's own count), or of ``prompt``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from tests.support.fakes import Behaviour


def schema_value(schema: Any, name: str) -> Any:
    if not isinstance(schema, dict):
        return f"{name}-value"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: schema_value(v, k) for k, v in props.items()}
    return {"integer": 7, "number": 1.5, "boolean": True, "array": []}.get(kind, f"{name}-value")


def ev(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class ChatTools:
    """Mixed into FakeOpenAI."""

    behaviour: Behaviour
    tokenized: int = 0  # POST /tokenize requests

    def _tool_call(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The call to answer with, or None for a text answer."""
        b = self.behaviour
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or "auto"
        messages = body.get("messages") or []
        if not b.tool_calls or not tools or choice == "none":
            return None
        if messages and messages[-1].get("role") == "tool":
            return None
        tool = tools[0]["function"]
        if isinstance(choice, dict):
            tool = next(t["function"] for t in tools if t["function"]["name"]
                        == choice["function"]["name"])  # fmt: skip
        elif b.tool_name is not None:
            tool = next(t["function"] for t in tools if t["function"]["name"] == b.tool_name)
        args = b.tool_input or schema_value(tool.get("parameters"), tool["name"])
        n = sum(m.get("role") == "assistant" for m in messages)
        arguments = orjson.dumps(args).decode()
        return {"id": f"chatcmpl-tool-{n}", "type": "function",
                "function": {"name": tool["name"], "arguments": arguments}}  # fmt: skip

    def _answer_words(self, body: dict[str, Any], n: int) -> tuple[list[str], str | None]:
        """The text answer's words and the stop string that cut it (None: none)."""
        messages = body.get("messages") or []
        results = []
        for m in reversed(messages):
            if m.get("role") != "tool":
                break
            c = m.get("content")
            results.insert(0, c if isinstance(c, str) else " ".join(p.get("text", "") for p in c))
        words = ["Result:", *" ".join(results).split()] if results else [
            f"w{i}" for i in range(n)]  # fmt: skip
        stop = body.get("stop")
        for s in [stop] if isinstance(stop, str) else stop or ():
            if s in words:
                return words[: words.index(s)], s
        return words, None

    def tool_completion(self, body: dict[str, Any], n: int, base: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed answer: a tool call, or text (with reasoning first)."""
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None,
                                  "finish_reason": "stop", "stop_reason": None}  # fmt: skip
        if self.behaviour.reasoning:
            message["reasoning"] = self.behaviour.reasoning
        call = self._tool_call(body)
        if call is not None:
            message["tool_calls"] = [call]
            choice["finish_reason"] = "tool_calls"
        else:
            words, stopped = self._answer_words(body, n)
            message["content"] = " ".join(words)
            choice["stop_reason"] = stopped
            if stopped is None and len(words) >= n and not message["content"].startswith("Result:"):
                choice["finish_reason"] = "length" if n < self.behaviour.words else "stop"
        return {**base, "object": "chat.completion", "choices": [choice]}

    def tool_chunks(self, body: dict[str, Any], n: int, base: dict[str, Any]) -> list[bytes]:
        """A streamed answer's chunks (without usage and [DONE])."""

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return ev({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish, **extra}]})  # fmt: skip

        out = [chunk({"role": "assistant", "content": ""})]
        reasoning = self.behaviour.reasoning
        if reasoning:
            out.extend(chunk({"reasoning": " " + w if i else w})
                       for i, w in enumerate(reasoning.split(" ")))  # fmt: skip
        call = self._tool_call(body)
        if call is not None:
            args = call["function"]["arguments"]
            out.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                              "function": {"name": call["function"]["name"],
                                                           "arguments": ""}}]}))  # fmt: skip
            for cut in range(0, len(args), 4):
                out.append(chunk({"tool_calls": [{"index": 0, "function": {
                    "arguments": args[cut : cut + 4]}}]}))  # fmt: skip
            out.append(chunk({}, "tool_calls", stop_reason=None))
            return out
        words, stopped = self._answer_words(body, n)
        out.extend(chunk({"content": " " + w if i else w}) for i, w in enumerate(words))
        finish = "length" if stopped is None and n < self.behaviour.words and not words[
            0].startswith("Result:") else "stop"  # fmt: skip
        out.append(chunk({}, finish, stop_reason=stopped))
        return out

    async def _tokenize(self, request: web.Request) -> web.Response:
        from tests.support.fakes import count_words

        self.tokenized += 1
        body = self._record(request, await request.read())
        if "messages" in body:
            count = count_words(body)
        else:
            count = len(str(body.get("prompt", "")).split())
        return web.json_response({"count": count, "max_model_len": 8192,
                                  "tokens": list(range(count)), "token_strs": None})  # fmt: skip

    def _record(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        raise NotImplementedError
