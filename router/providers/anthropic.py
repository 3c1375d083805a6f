"""Anthropic's Messages API behind the OpenAI chat-completions contract.

``POST {url}/v1/messages`` (``url`` defaults to https://api.anthropic.com) with
``x-api-key`` and ``anthropic-version`` headers. The request is translated by
:mod:`router.providers.anthropic_request`; answers are translated back here:

* a Message -> a ``chat.completion``: text blocks -> ``content``, tool_use
  blocks -> ``tool_calls`` (arguments as JSON strings), thinking -> vLLM's
  ``reasoning`` (signatures are not carried), ``stop_reason`` ->
  ``finish_reason``, usage with cache reads and writes in
  ``prompt_tokens_details``;
* the event stream -> ``chat.completion.chunk`` events: ``message_start`` ->
  the role chunk, ``text_delta`` -> content, ``tool_use`` blocks and each
  ``input_json_delta`` -> tool-call deltas as they arrive, ``message_delta``
  -> the finish chunk, ``message_stop`` -> the usage chunk (when the client
  asked for it) and ``[DONE]``; ``ping`` is dropped; an ``error`` event is
  raised as :class:`router.errors.UpstreamStatus` so the proxy ends the
  stream with an OpenAI error event;
* Anthropic error bodies -> the OpenAI envelope with the same status (529
  ``overloaded_error`` becomes 503), the Anthropic type kept as ``code``;
  429 and 5xx are retryable.

This is the one provider whose stream must be parsed: one ``orjson.loads``
per Anthropic event, chunks assembled from pre-built byte prefixes.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from yarl import URL

from router.config import Backend
from router.errors import InvalidRequest, UpstreamError
from router.providers.anthropic_native import NativeAdapter
from router.providers.anthropic_request import Policy, to_messages_request
from router.providers.anthropic_wire import (
    Counts,
    EventReader,
    StreamAnswers,
    anthropic_status_error,
)
from router.providers.base import Adapter, Call, HTTPBackend, Opened, Usage
from router.serving import PROVIDER_APIS
from router.streaming import DONE
from router.upstream import Upstream

API_URL = "https://api.anthropic.com"

FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}  # fmt: skip

# Anthropic delta type -> (its text field, the OpenAI delta key it becomes)
_TEXT_DELTAS = {
    "text_delta": ("text", b'{"content":'),
    "thinking_delta": ("thinking", b'{"reasoning":'),
}


class AnthropicBackend(HTTPBackend):
    """One Anthropic account (or a Messages-API-compatible server)."""

    provider = "anthropic"
    apis = PROVIDER_APIS["anthropic"]
    default_url = API_URL

    def __init__(self, name: str, cfg: Backend, upstream: Upstream) -> None:
        super().__init__(name, cfg, upstream)
        base = (cfg.url or API_URL).rstrip("/")
        if base.endswith("/v1/messages"):
            self.url = URL(base)
        elif base.endswith("/v1"):
            self.url = URL(base + "/messages")
        else:
            self.url = URL(base + "/v1/messages")
        self.count_url = URL(str(self.url) + "/count_tokens")
        self.policy = Policy(name, cfg.unsupported_params, frozenset(cfg.allow_params))

    def base_headers(self) -> dict[str, str]:
        headers = super().base_headers()
        headers["anthropic-version"] = self.cfg.anthropic_version
        return headers

    def auth_headers(self) -> dict[str, str]:
        key = self.credential.value
        return {"x-api-key": key} if key is not None else {}

    def adapter(self, call: Call) -> Adapter:
        if call.api in ("messages", "count_tokens"):
            return NativeAdapter(self, call)  # the client speaks Anthropic's API too
        return AnthropicAdapter(self, call)


class AnthropicAdapter(StreamAnswers):
    __slots__ = ("_backend", "_call")

    def __init__(self, backend: AnthropicBackend, call: Call) -> None:
        self._backend = backend
        self._call = call
        self._stream: AnthropicStream | None = None
        self.usage: Usage | None = None

    def request_body(self) -> dict[str, Any]:
        """The Messages API request for this attempt."""
        call = self._call
        max_tokens = call.max_tokens or call.chat.output_limit() or call.default_max_tokens
        return to_messages_request(
            call.chat, model=call.member_model, max_tokens=max_tokens, stream=call.stream,
            policy=self._backend.policy,
        )  # fmt: skip

    async def open(self) -> Opened:
        call, be = self._call, self._backend
        if be.unusable is not None:
            raise UpstreamError(be.unusable)
        try:
            body = orjson.dumps(self.request_body())
        except TypeError:  # a free-form field (a tool's schema) holds an integer over 64 bits
            raise InvalidRequest(
                f"The request holds an integer beyond 64 bits, which backend {be.name!r} "
                "cannot take.", code="invalid_number",
            ) from None  # fmt: skip
        assert be.egress is not None
        opened = await be.upstream.post(
            be.url, be.headers, body, be.egress, extra=call.forward_headers,
            on_error=anthropic_status_error,
        )  # fmt: skip
        if call.stream and opened.is_stream:
            self._stream = AnthropicStream(
                call.client_model, call.wants_usage, be.name, "chatcmpl-" + call.request_id
            )
        return opened

    # -- non-streamed -------------------------------------------------------------
    def transform_body(self, body: bytes) -> bytes:
        name = self._backend.name
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Backend {name!r} answered with invalid JSON.") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), list):
            if isinstance(doc, dict) and doc.get("type") == "error":
                raise anthropic_status_error(502, body, backend=f"backend {name!r}")
            raise UpstreamError(f"Backend {name!r} answered an unexpected body.")
        try:
            return self._completion(doc)
        except (AttributeError, TypeError):
            raise UpstreamError(f"Backend {name!r} answered an unexpected body.") from None

    def _completion(self, doc: dict[str, Any]) -> bytes:
        counts = Counts()
        counts.take(doc.get("usage"))
        self.usage = counts.usage(reported=True)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in doc["content"]:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text") or ""))
            elif kind == "thinking":
                thoughts.append(str(block.get("thinking") or ""))
            elif kind == "tool_use":
                calls.append({"id": block.get("id"), "type": "function", "function": {
                    "name": block.get("name"),
                    "arguments": orjson.dumps(block.get("input") or {}).decode(),
                }})  # fmt: skip
            # redacted_thinking and server-tool blocks have no OpenAI form
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None,
                                   "refusal": None}  # fmt: skip
        if thoughts:
            message["reasoning"] = "".join(thoughts)  # vLLM's name for it
        if calls:
            message["tool_calls"] = calls
        return orjson.dumps({
            "id": doc.get("id") or "chatcmpl-" + self._call.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._call.client_model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": FINISH_REASONS.get(doc.get("stop_reason") or "",
                                                             "stop")}],
            "usage": counts.openai(),
        })  # fmt: skip


_OPEN = b'{"index":0,"delta":'
_CLOSE = b',"logprobs":null,"finish_reason":null}]}\n\n'


class AnthropicStream(EventReader):
    """Anthropic's SSE events -> OpenAI chunk events, buffer by buffer."""

    __slots__ = ("_args", "_finished", "_keep_usage", "_model", "_pre", "_tools")

    def __init__(self, client_model: str, keep_usage: bool, backend: str, fallback_id: str) -> None:
        super().__init__(backend)
        self._model = orjson.dumps(client_model)
        self._keep_usage = keep_usage
        self._tools: dict[int, int] = {}  # content block index -> tool call ordinal
        self._args: set[int] = set()  # tool calls that have streamed arguments
        self._finished = False
        self._pre = self._prefix(fallback_id)

    def _prefix(self, message_id: str) -> bytes:
        return (
            b'data: {"id":' + orjson.dumps(message_id)
            + b',"object":"chat.completion.chunk","created":' + str(int(time.time())).encode()
            + b',"model":' + self._model + b',"choices":['
        )  # fmt: skip

    def _event(self, kind: Any, doc: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        if kind == "content_block_delta":
            delta = doc.get("delta") or {}
            dtype = delta.get("type")
            if dtype in _TEXT_DELTAS:
                field, key = _TEXT_DELTAS[dtype]
                text = delta.get(field)
                if text:
                    self.chars += len(text)
                    out.append(self._pre + _OPEN + key + orjson.dumps(text) + b"}" + _CLOSE)
            elif dtype == "input_json_delta":
                part = delta.get("partial_json")
                k = self._tools.get(doc.get("index", -1))
                if part and k is not None:
                    self.chars += len(part)
                    self._args.add(k)
                    out.append(self._tool_chunk({"index": k, "function": {"arguments": part}}))
            # signature and citations deltas have no OpenAI form
        elif kind == "content_block_start":
            self._block_start(doc, out)
        elif kind == "content_block_stop":
            k = self._tools.get(doc.get("index", -1))
            if k is not None and k not in self._args:
                self._args.add(k)  # a call without input: still valid JSON arguments
                out.append(self._tool_chunk({"index": k, "function": {"arguments": "{}"}}))
        elif kind == "message_delta":
            reason = (doc.get("delta") or {}).get("stop_reason")
            out.append(self._finish_chunk(FINISH_REASONS.get(reason or "", "stop")))
        elif kind == "message_start":
            message = doc.get("message") or {}
            if isinstance(message.get("id"), str):
                self._pre = self._prefix(message["id"])
            out.append(self._pre + _OPEN + b'{"role":"assistant","content":""}' + _CLOSE)
        elif kind == "message_stop":
            if not self._finished:
                out.append(self._finish_chunk("stop"))
            if self._keep_usage:
                out.append(self._pre + b'],"usage":' + orjson.dumps(self._counts.openai())
                           + b"}\n\n")  # fmt: skip
            out.append(DONE)
        # ping and event types added later: nothing to relay

    def _block_start(self, doc: dict[str, Any], out: list[bytes]) -> None:
        block = doc.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            k = len(self._tools)
            self._tools[doc.get("index", k)] = k
            out.append(self._tool_chunk({
                "index": k, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }))  # fmt: skip
            given = block.get("input")
            if given:  # a block that arrives with its input already complete
                self._args.add(k)
                args = orjson.dumps(given).decode()
                self.chars += len(args)
                out.append(self._tool_chunk({"index": k, "function": {"arguments": args}}))
        elif kind == "text" and block.get("text"):
            text = block["text"]
            self.chars += len(text)
            out.append(self._pre + _OPEN + b'{"content":' + orjson.dumps(text) + b"}" + _CLOSE)

    def _tool_chunk(self, call: dict[str, Any]) -> bytes:
        return self._pre + _OPEN + b'{"tool_calls":[' + orjson.dumps(call) + b"]}" + _CLOSE

    def _finish_chunk(self, reason: str) -> bytes:
        self._finished = True
        return (self._pre + _OPEN + b'{},"logprobs":null,"finish_reason":'
                + orjson.dumps(reason) + b"}]}\n\n")  # fmt: skip
