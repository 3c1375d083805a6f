"""Client headers the gateway passes on upstream: only well-formed ones.

Header values arrive as aiohttp decodes them (UTF-8, with undecodable bytes kept
as surrogate escapes), so a value may hold anything a client sent. The W3C
trace context (``traceparent``, ``tracestate``) and ``baggage`` are forwarded
only when they have their specified shape (printable ASCII, bounded length, a
``traceparent`` of version-traceid-parentid-flags); anything else is dropped,
as a tracing system drops a malformed trace header, and never reaches a backend.
A client API's own headers (Anthropic's ``anthropic-version`` and
``anthropic-beta``) pass only as printable ASCII of bounded length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# version (not ff), trace id, parent id, flags; a later version may append fields
_TRACEPARENT = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(?:-[\x21-\x7e]+)?"
)
_LIMITS = {"traceparent": 512, "tracestate": 512, "baggage": 8192}


MAX_VALUE = 1024  # characters of a client API's own header (anthropic-beta lists)


def well_formed(name: str, value: str) -> bool:
    """Whether a trace header's ``value`` may be forwarded."""
    if len(value) > _LIMITS[name] or not value.isascii() or not value.isprintable():
        return False
    return name != "traceparent" or _TRACEPARENT.fullmatch(value) is not None


def passed_on(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """A client API's own headers (``anthropic-version``, ``anthropic-beta``) that are
    printable ASCII of bounded length; others are dropped (the backend's default)."""
    out = {}
    for name in names:
        value = headers.get(name)
        if value is not None and len(value) <= MAX_VALUE and value.isascii() and (
            value.isprintable()
        ):  # fmt: skip
            out[name] = value
    return out


def forwarded(headers: Mapping[str, str], rid: str) -> dict[str, str]:
    """What goes upstream with every attempt: the request id and the client's trace
    context when it is well-formed."""
    fwd = {"X-Request-Id": rid}
    for name in _LIMITS:
        value = headers.get(name)
        if value is not None and well_formed(name, value):
            fwd[name] = value
    return fwd
