"""Anthropic's own API, natively: ``/v1/messages`` and ``/v1/messages/count_tokens``.

The client's body is sent as it came, with only the member's model name and,
when the gateway clamped the output, ``max_tokens`` replaced: thinking blocks,
``cache_control``, server tools and beta fields all reach Anthropic. The
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
from router.providers.anthropic_wire import Counts, anthropic_status_error, error_from
from router.providers.base import Call, Opened, Usage

if TYPE_CHECKING:
    from router.providers.anthropic import AnthropicBackend


class NativeAdapter:
    """One attempt of a Messages (or count_tokens) call on an Anthropic backend."""

    __slots__ = ("_backend", "_call", "_stream", "usage")

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
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Backend {name!r} answered with invalid JSON.") from None
        if not isinstance(doc, dict):
            raise UpstreamError(f"Backend {name!r} answered an unexpected body.")
        if call.api == "count_tokens":
            self.usage = Usage(0, 0, reported=True)  # counting generates nothing
            return body
        counts = Counts()
        counts.take(doc.get("usage"))
        self.usage = counts.usage(reported=isinstance(doc.get("usage"), dict))
        doc["model"] = call.client_model
        return orjson.dumps(doc)

    def transform_chunk(self, data: bytes) -> bytes:
        assert self._stream is not None
        return self._stream.feed(data)

    def finish_stream(self) -> bytes:
        stream = self._stream
        if stream is None:
            return b""
        out = stream.finish()
        self.usage = stream.usage_so_far()
        return out

    def stream_usage_so_far(self) -> Usage | None:
        return self._stream.usage_so_far() if self._stream is not None else None


class NativeStream:
    """Anthropic's events relayed whole, the model name swapped in ``message_start``;
    usage read from ``message_start`` and ``message_delta``."""

    __slots__ = ("_backend", "_counts", "_done", "_error", "_model", "_seen_delta",
                 "_seen_start", "_tail", "chars")  # fmt: skip

    def __init__(self, client_model: str, backend: str) -> None:
        self._model = client_model
        self._backend = backend
        self._tail = b""
        self._counts = Counts()
        self._seen_start = self._seen_delta = self._done = False
        self._error: UpstreamError | None = None
        self.chars = 0  # delta bytes relayed (an estimate when cut short)

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        buf = self._tail + data if self._tail else data
        buf = buf.replace(b"\r\n", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._tail = buf
            return b""
        self._tail = buf[cut + 2 :]
        out = self._events(buf[: cut + 2])
        if self._error is not None and not out:
            raise self._error
        return out

    def finish(self) -> bytes:
        out = b""
        if self._tail.strip() and self._error is None:
            tail, self._tail = self._tail, b""
            out = self._events(tail + b"\n\n")
        if self._error is not None:
            raise self._error
        if not self._done:
            raise UpstreamError(
                f"The stream from backend {self._backend!r} ended before message_stop."
            )
        return out

    def _events(self, block: bytes) -> bytes:
        out: list[bytes] = []
        for part in block.split(b"\n\n"):
            raw = part
            if not raw.strip():
                continue
            data = next((ln[5:] for ln in raw.split(b"\n") if ln[:5] == b"data:"), None)
            if data is None:
                out.append(raw + b"\n\n")  # comments and the like
                continue
            try:
                doc = orjson.loads(data)
                kind = doc.get("type")
            except (orjson.JSONDecodeError, AttributeError):
                self._error = UpstreamError(f"Backend {self._backend!r} sent an unreadable event.")
                break
            if kind == "error":
                err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
                etype = err.get("type")
                self._error = error_from(
                    etype if isinstance(etype, str) else None,
                    str(err.get("message") or "The upstream stream failed."), None,
                )  # fmt: skip
                break
            if kind == "message_start" and isinstance(doc.get("message"), dict):
                self._seen_start = True
                message = doc["message"]
                self._counts.take(message.get("usage"))
                message["model"] = self._model
                raw = b"event: message_start\ndata: " + orjson.dumps(doc)
            elif kind == "message_delta":
                self._seen_delta = True
                self._counts.take(doc.get("usage"))
            elif kind == "content_block_delta":
                self.chars += len(data)
            elif kind == "message_stop":
                self._done = True
            out.append(raw + b"\n\n")
        return b"".join(out)

    def usage_so_far(self) -> Usage:
        """Exact once ``message_delta`` arrived; before that the output is estimated
        from the deltas relayed."""
        counts = self._counts
        if self._seen_delta:
            return counts.usage(reported=True)
        estimate = max(counts.output, self.chars // 16)
        return counts.usage(reported=self._seen_start, completion=estimate)
