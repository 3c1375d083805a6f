"""Chat-completion chunks -> Anthropic's Messages event stream.

The first chunk opens the message (``message_start``, then ``ping``); each run
of reasoning, text or one tool call's arguments is one content block
(``content_block_start``, its deltas, ``content_block_stop``): reasoning ->
``thinking_delta``, content -> ``text_delta``, tool-call arguments ->
``input_json_delta`` in the order they arrive. The finish reason and the usage
chunk (the bridge always asks for it) make the closing ``message_delta``, then
``message_stop``. An in-band error of the backend is raised once what came
before it is out, so the stream ends with Anthropic's ``error`` event.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.errors import UpstreamError, UpstreamStatus

# chat finish_reason -> Messages stop_reason
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}  # fmt: skip


def stop_reason(
    choice: dict[str, Any], called: bool, stops: tuple[str, ...]
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished choice. vLLM names the stop string
    it matched in ``stop_reason``."""
    finish = choice.get("finish_reason")
    if called or finish == "tool_calls":
        return "tool_use", None
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish or "stop", "end_turn"), None


def event(kind: str, doc: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


class ChatStreamToMessages:
    """One attempt's chat stream -> Messages events (``chunk``/``finish``)."""

    __slots__ = ("_block", "_called", "_error", "_finish", "_index", "_open", "_started",
                 "_tools", "_usage", "model", "stops")  # fmt: skip

    def __init__(self, model: str, stops: tuple[str, ...]) -> None:
        self.model = model
        self.stops = stops
        self._started = False
        self._open = False  # a content block is open
        self._block = ""  # its kind: thinking, text or tool:<k>
        self._index = -1  # its index
        self._tools: set[int] = set()  # tool calls already given a block
        self._called = False
        self._finish: dict[str, Any] | None = None  # the choice that finished
        self._usage: dict[str, Any] | None = None
        self._error: UpstreamError | None = None

    @staticmethod
    def message_id(chat_id: Any) -> str:
        tail = chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) else ""
        return "msg_" + (tail or "spillway")

    @staticmethod
    def usage_of(raw: Any) -> dict[str, int]:
        """OpenAI's usage in Anthropic's fields (input_tokens excludes cache reads)."""
        usage = raw if isinstance(raw, dict) else {}
        prompt = usage.get("prompt_tokens")
        output = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        prompt = prompt if isinstance(prompt, int) else 0
        cached = cached if isinstance(cached, int) else 0
        return {"input_tokens": max(0, prompt - cached),
                "output_tokens": output if isinstance(output, int) else 0,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}  # fmt: skip

    # -- AnswerTranslator -----------------------------------------------------------
    def chunk(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        for line in data.split(b"\n"):
            if line[:5] != b"data:":
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                doc = orjson.loads(payload)
                if isinstance(doc.get("error"), dict):
                    self._error = _in_band(doc["error"])
                    break
                self._chunk(doc, out)
            except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
                self._error = UpstreamError(
                    "The backend sent a stream event the gateway cannot read."
                )
                break
        if self._error is not None and not out:
            raise self._error
        return b"".join(out)

    def finish(self) -> bytes:
        if self._error is not None:
            raise self._error
        if self._finish is None:
            raise UpstreamError("The backend's stream ended before its finish reason.")
        out: list[bytes] = []
        self._close(out)
        reason, sequence = stop_reason(self._finish, self._called, self.stops)
        usage = self.usage_of(self._usage)
        out.append(event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage,
        }))  # fmt: skip
        out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    # -- chunks ---------------------------------------------------------------------
    def _chunk(self, doc: dict[str, Any], out: list[bytes]) -> None:
        if not self._started:
            self._started = True
            out.append(event("message_start", {"type": "message_start", "message": {
                "id": self.message_id(doc.get("id")), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}))  # fmt: skip
            out.append(event("ping", {"type": "ping"}))
        if isinstance(doc.get("usage"), dict):
            self._usage = doc["usage"]
        for choice in doc.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                self._ensure("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
                self._delta({"type": "thinking_delta", "thinking": reasoning}, out)
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._ensure("text", {"type": "text", "text": ""}, out)
                self._delta({"type": "text_delta", "text": text}, out)
            for tc in delta.get("tool_calls") or ():
                self._tool(tc, out)
            if choice.get("finish_reason"):
                self._finish = choice

    def _tool(self, tc: dict[str, Any], out: list[bytes]) -> None:
        k = tc.get("index", 0)
        fn = tc.get("function") or {}
        key = f"tool:{k}"
        if k not in self._tools:
            self._tools.add(k)
            self._called = True
            self._close(out)
            self._start(key, {"type": "tool_use", "id": tc.get("id") or f"toolu_{k}",
                              "name": fn.get("name") or "", "input": {}}, out)  # fmt: skip
        elif self._block != key:
            raise UpstreamError("The backend interleaved the arguments of its tool calls.")
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            self._delta({"type": "input_json_delta", "partial_json": args}, out)

    def _ensure(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        if self._open and self._block == kind:
            return
        self._close(out)
        self._start(kind, block, out)

    def _start(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._index += 1
        self._open, self._block = True, kind
        doc = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(event("content_block_start", doc))

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        doc = {"type": "content_block_delta", "index": self._index, "delta": delta}
        out.append(event("content_block_delta", doc))

    def _close(self, out: list[bytes]) -> None:
        if self._open:
            self._open = False
            out.append(event("content_block_stop", {"type": "content_block_stop",
                                                    "index": self._index}))  # fmt: skip


def _in_band(err: dict[str, Any]) -> UpstreamStatus:
    message = err.get("message")
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 502
    return UpstreamStatus(status, str(message or "The backend's stream failed."))
