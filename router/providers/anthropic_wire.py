"""Anthropic's error bodies and token counts, shared by both directions
(:mod:`router.providers.anthropic` and :mod:`router.providers.anthropic_native`)."""

from __future__ import annotations

from typing import Any

import orjson

from router.errors import UpstreamStatus, status_error
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
