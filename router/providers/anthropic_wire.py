"""Anthropic's error bodies and token counts, shared by both directions
(:mod:`router.providers.anthropic` and :mod:`router.providers.anthropic_native`)."""

from __future__ import annotations

from typing import Any

import orjson

from router.errors import UpstreamError, UpstreamStatus, status_error
from router.providers.base import Usage

# The status each Anthropic error type comes with (used when there is no HTTP
# status, i.e. for an ``error`` event inside a stream).
ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504,
    "overloaded_error": 529,
}  # fmt: skip


def error_from(
    etype: str | None, message: str, status: int | None, retry_after: float | None = None
) -> UpstreamStatus:
    """An Anthropic error -> :class:`UpstreamStatus` (OpenAI envelope, retryable flag)."""
    if status is None:
        status = ERROR_STATUS.get(etype or "", 502)
    if status == 529:
        status = 503  # "overloaded": OpenAI's clients know 503, not 529
    return UpstreamStatus(status, message, code=etype, retry_after=retry_after)


def anthropic_status_error(
    status: int, body: bytes, *, retry_after: float | None = None, backend: str = "upstream"
) -> UpstreamStatus:
    """An Anthropic error response (``{"type":"error","error":{type,message}}``)."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        etype = err.get("type")
        return error_from(
            etype if isinstance(etype, str) else None, err["message"], status, retry_after
        )
    mapped = status_error(status, body, retry_after=retry_after, backend=backend)
    if status == 529:
        return error_from("overloaded_error", mapped.message, status, retry_after)
    return mapped


class Counts:
    """Anthropic's token counts (cumulative in a stream)."""

    __slots__ = ("cache_read", "cache_write", "input", "output")

    def __init__(self) -> None:
        self.input = self.output = self.cache_read = self.cache_write = 0

    def take(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            return
        value = raw.get("input_tokens")
        if isinstance(value, int):
            self.input = value
        value = raw.get("output_tokens")
        if isinstance(value, int):
            self.output = value
        value = raw.get("cache_read_input_tokens")
        if isinstance(value, int):
            self.cache_read = value
        value = raw.get("cache_creation_input_tokens")
        if isinstance(value, int):
            self.cache_write = value

    @property
    def prompt(self) -> int:
        return self.input + self.cache_read + self.cache_write

    def usage(self, *, reported: bool, completion: int | None = None) -> Usage:
        out = self.output if completion is None else completion
        return Usage(self.prompt, out, self.cache_read, reported)

    def openai(self) -> dict[str, Any]:
        prompt = self.prompt
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt + self.output,
            "prompt_tokens_details": {"cached_tokens": self.cache_read,
                                      "cache_write_tokens": self.cache_write},
        }  # fmt: skip


class EventReader:
    """Anthropic's SSE events, buffer by buffer: each whole event goes to
    :meth:`_event` (with its bytes); the usage is read from ``message_start`` and the
    cumulative ``message_delta``; an ``error`` event (or an unreadable one) is raised
    once what came before it is out. Subclasses render the events."""

    __slots__ = ("_backend", "_counts", "_done", "_error", "_seen_delta", "_seen_start",
                 "_tail", "chars")  # fmt: skip

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._tail = b""
        self._counts = Counts()
        self._seen_start = self._seen_delta = self._done = False
        self._error: UpstreamError | None = None
        self.chars = 0  # text and argument characters relayed (estimate when cut short)

    def _event(self, kind: Any, doc: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        raise NotImplementedError

    def _other(self, raw: bytes, out: list[bytes]) -> None:
        """An event without data (a comment): nothing by default."""

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        if self._done:
            return b""
        buf = self._tail + data if self._tail else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._tail = buf
            return b""
        self._tail = buf[cut + 2 :]
        return self._events(buf[:cut])

    def finish(self) -> bytes:
        """The end of the upstream body: flush, or raise if the stream was cut short."""
        out = b""
        if self._tail.strip() and self._error is None and not self._done:
            tail, self._tail = self._tail, b""
            out = self._events(tail.replace(b"\r\n", b"\n").rstrip(b"\n"))
        if self._error is not None:
            raise self._error
        if not self._done:
            raise UpstreamError(
                f"The stream from backend {self._backend!r} ended before message_stop."
            )
        return out

    def _events(self, block: bytes) -> bytes:
        out: list[bytes] = []
        for raw in block.split(b"\n\n"):
            data = next((ln[5:] for ln in raw.split(b"\n") if ln[:5] == b"data:"), None)
            if data is None:
                if raw.strip():
                    self._other(raw, out)
                continue
            try:
                doc = orjson.loads(data)
                kind = doc.get("type")
                if kind == "error":
                    err = doc.get("error") or {}
                    etype = err.get("type")
                    self._error = error_from(
                        etype if isinstance(etype, str) else None,
                        str(err.get("message") or "The upstream stream failed."), None,
                    )  # fmt: skip
                    break
                if kind == "message_start":
                    self._seen_start = True
                    self._counts.take((doc.get("message") or {}).get("usage"))
                elif kind == "message_delta":
                    self._seen_delta = True
                    self._counts.take(doc.get("usage"))
                elif kind == "message_stop":
                    self._done = True
                self._event(kind, doc, raw, out)
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                self._error = UpstreamError(f"Backend {self._backend!r} sent an unreadable event.")
                break
            if self._done:
                break
        if self._error is not None and not out:
            raise self._error
        return b"".join(out)

    def usage_so_far(self) -> Usage:
        """Exact once ``message_delta`` arrived; before that the output is estimated
        from the characters relayed (about four per token)."""
        counts = self._counts
        if self._seen_delta:
            return counts.usage(reported=True)
        estimate = max(counts.output, (self.chars + 3) // 4)
        return counts.usage(reported=self._seen_start, completion=estimate)


class StreamAnswers:
    """The streamed half of an adapter whose stream is an :class:`EventReader`."""

    __slots__ = ("_stream", "usage")
    _stream: EventReader | None
    usage: Usage | None

    def transform_chunk(self, data: bytes) -> bytes:
        assert self._stream is not None
        return self._stream.feed(data)

    def finish_stream(self) -> bytes:
        stream = self._stream
        if stream is None:
            return b""
        out = stream.finish()  # raises when the stream was cut short or failed
        self.usage = stream.usage_so_far()
        return out

    def stream_usage_so_far(self) -> Usage | None:
        return self._stream.usage_so_far() if self._stream is not None else None
