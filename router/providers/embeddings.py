"""Embeddings on OpenAI-compatible backends (vLLM, OpenAI, Azure): ``{url}/embeddings``.

The client's body is forwarded with the gateway's changes only (the model
name, the parameter policy). The answer is relayed as the backend wrote it,
with the model name swapped, and without parsing the vectors: the usage
object is read from the end of the body (where OpenAI and vLLM put it), the
whole body only when it is not there.

``encoding_format``: relayed as the backend returns it. A backend that cannot
encode base64 lists ``encoding_format`` in ``deny_params``: it is then asked
for floats, and the gateway encodes each vector as OpenAI does (little-endian
float32, base64) when the client asked for base64.
"""

from __future__ import annotations

import base64
import re
import sys
from array import array
from typing import TYPE_CHECKING, Any

import orjson

from router.errors import UpstreamError
from router.inbound.contracts import EmbeddingRequest
from router.providers.base import Call, Opened, Usage
from router.providers.params import patch_body

if TYPE_CHECKING:
    from router.providers.openai import CompatBackend

_MODEL = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
GATEWAY_PARAMS = frozenset({"encoding_format"})  # encoded by the gateway when denied


def to_base64(vector: Any) -> str:
    """A float vector as OpenAI's base64: little-endian float32 values."""
    if not isinstance(vector, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector
    ):
        raise TypeError("not a list of numbers")
    values = array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode()


def _tail_usage(body: bytes) -> dict[str, Any] | None:
    """The top-level ``usage`` object when it is the body's last member."""
    pos = body.rfind(b'"usage"')
    end = body.rfind(b"}")
    if pos < 0 or end < pos:
        return None
    colon = body.find(b":", pos)
    try:
        usage = orjson.loads(body[colon + 1 : end])
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None


class EmbeddingsAdapter:
    __slots__ = ("_backend", "_blocked", "_call", "_encode", "usage")

    def __init__(self, backend: CompatBackend, call: Call) -> None:
        assert isinstance(call.request, EmbeddingRequest)
        self._backend = backend
        self._call = call
        blocked = backend.blocked_by_api["embeddings"]
        self._encode = call.request.encoding_format == "base64" and "encoding_format" in blocked
        self._blocked = blocked - GATEWAY_PARAMS
        self.usage: Usage | None = None

    async def open(self) -> Opened:
        call, be = self._call, self._backend
        if be.unusable is not None:
            raise UpstreamError(be.unusable)
        req = call.request
        fields = req.model_fields_set
        if (
            call.member_model != req.model
            or not self._blocked.isdisjoint(fields)
            or ("encoding_format" in fields and "encoding_format" in be.blocked_by_api[call.api])
        ):
            doc = patch_body(call, be.name, self._blocked, be.unsupported)
            if "encoding_format" in be.blocked_by_api[call.api]:
                doc.pop("encoding_format", None)
            body = orjson.dumps(doc)
        else:
            body = call.raw
        return await be.upstream.post(
            be.endpoint(call.api, call.member_model), be.headers, body, be.limits,
            backend=be.name, extra=call.forward_headers,
        )  # fmt: skip

    def transform_body(self, body: bytes) -> bytes:
        stripped = body.strip()
        if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
            raise UpstreamError(f"Backend {self._backend.name!r} answered with invalid JSON.")
        usage = None if self._encode else _tail_usage(stripped)
        if usage is None:
            return self._parsed(stripped)
        self.usage = _usage(usage)
        return self._swap_model(stripped)

    def _swap_model(self, body: bytes) -> bytes:
        client = self._call.client_model
        pos = body.find(b'"model"')
        found = _MODEL.match(body, pos) if pos >= 0 else None
        if found is None:
            return body
        new = b'"model":' + orjson.dumps(client)
        if found.group(0) == new:
            return body
        return body[: found.start()] + new + body[found.end() :]

    def _parsed(self, body: bytes) -> bytes:
        """The slow path: the whole answer parsed (no usage at the end, or vectors to
        encode)."""
        name = self._backend.name
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Backend {name!r} answered with invalid JSON.") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise UpstreamError(f"Backend {name!r} answered an unexpected body.")
        self.usage = _usage(doc.get("usage"))
        if self._encode:
            try:
                for item in doc["data"]:
                    if isinstance(item.get("embedding"), list):
                        item["embedding"] = to_base64(item["embedding"])
            except (TypeError, AttributeError, OverflowError):
                raise UpstreamError(
                    f"Backend {name!r} answered embeddings that are not lists of numbers."
                ) from None
        doc["model"] = self._call.client_model
        return orjson.dumps(doc)

    def transform_chunk(self, data: bytes) -> bytes:
        return data  # never streamed

    def finish_stream(self) -> bytes:
        return b""

    def stream_usage_so_far(self) -> Usage | None:
        return None


def _usage(raw: Any) -> Usage:
    """Embeddings usage: prompt tokens only (none reported: estimated at settlement)."""
    if isinstance(raw, dict):
        prompt = raw.get("prompt_tokens")
        if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0:
            return Usage(prompt_tokens=prompt, completion_tokens=0)
    return Usage(prompt_tokens=0, completion_tokens=0, reported=False)
