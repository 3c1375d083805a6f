"""Anthropic's own API, natively: ``/v1/messages`` and ``/v1/messages/count_tokens``.

The client's body is sent as it came, with only the member's model name and,
when the gateway clamped the output, ``max_tokens`` replaced: thinking blocks,
``cache_control``, server tools and beta fields all reach Anthropic. Only
thinking blocks without a signature are left out: reasoning of another backend
on a route that spilled, which Anthropic cannot verify. The
client's ``anthropic-version`` and ``anthropic-beta`` headers come with the
call. Answers are relayed with the client's model name; the usage is read on
the way (``message_start`` and the cumulative ``message_delta``, cache reads
and writes included in the prompt). An ``error`` event ends the stream with
the same error in the client's form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from router.errors import UpstreamError
from router.providers.anthropic_wire import (
    Counts,
    EventReader,
    StreamAnswers,
    anthropic_status_error,
)
from router.providers.base import Call, Opened, Usage, answer_object

if TYPE_CHECKING:
    from router.providers.anthropic import AnthropicBackend


class NativeAdapter(StreamAnswers):
    """One attempt of a Messages (or count_tokens) call on an Anthropic backend."""

    __slots__ = ("_backend", "_call")

    def __init__(self, backend: AnthropicBackend, call: Call) -> None:
        self._backend = backend
        self._call = call
        self._stream: NativeStream | None = None
        self.usage: Usage | None = None

    def request_body(self) -> bytes:
        call = self._call
        body: dict[str, Any] = dict(call.body)
        body["model"] = call.member_model
        if call.max_tokens is not None and call.api == "messages":
            body["max_tokens"] = min(call.max_tokens, body.get("max_tokens") or call.max_tokens)
        if call.api == "messages":
            body["messages"] = unsigned_thinking_dropped(body.get("messages"))
        return orjson.dumps(body)

    async def open(self) -> Opened:
        call, be = self._call, self._backend
        if be.unusable is not None:
            raise UpstreamError(be.unusable)
        url = be.url if call.api == "messages" else be.count_url
        assert be.egress is not None
        opened = await be.upstream.post(
            url, be.headers, self.request_body(), be.egress, extra=call.forward_headers,
            on_error=anthropic_status_error,
        )  # fmt: skip
        if call.stream and opened.is_stream:
            self._stream = NativeStream(call.client_model, be.name)
        return opened

    def transform_body(self, body: bytes) -> bytes:
        call, name = self._call, self._backend.name
        doc = answer_object(name, body)
        if call.api == "count_tokens":
            self.usage = Usage(0, 0, reported=True)  # counting generates nothing
            return body
        counts = Counts()
        counts.take(doc.get("usage"))
        self.usage = counts.usage(reported=isinstance(doc.get("usage"), dict))
        doc["model"] = call.client_model
        return orjson.dumps(doc)


def unsigned_thinking_dropped(messages: Any) -> Any:
    """The turns without thinking blocks that carry no signature: reasoning another
    backend produced on a route that spilled (the gateway's translation gives them an
    empty one), which Anthropic cannot verify and would refuse."""
    if not isinstance(messages, list):
        return messages
    out = []
    for turn in messages:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, list) and turn.get("role") == "assistant":
            kept = [b for b in content if not (isinstance(b, dict) and b.get("type") ==
                                               "thinking" and not b.get("signature"))]  # fmt: skip
            if len(kept) != len(content):
                out.append({**turn, "content": kept})
                continue
        out.append(turn)
    return out


class NativeStream(EventReader):
    """Anthropic's events relayed whole, the model name swapped in ``message_start``."""

    __slots__ = ("_model",)

    def __init__(self, client_model: str, backend: str) -> None:
        super().__init__(backend)
        self._model = client_model

    def _other(self, raw: bytes, out: list[bytes]) -> None:
        out.append(raw + b"\n\n")  # comments and the like

    def _event(self, kind: Any, doc: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        if kind == "message_start" and isinstance(doc.get("message"), dict):
            doc["message"]["model"] = self._model
            raw = b"event: message_start\ndata: " + orjson.dumps(doc)
        elif kind == "content_block_delta":
            delta = doc.get("delta") or {}
            for field in ("text", "partial_json", "thinking"):
                value = delta.get(field)
                if isinstance(value, str):
                    self.chars += len(value)
        out.append(raw + b"\n\n")
