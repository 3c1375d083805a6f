"""OpenAI Responses passed through to a backend that speaks it (``{url}/responses``).

OpenAI (flavour ``openai``), Azure's v1 API, and vLLM members declaring
``responses: native``. The client's JSON goes out with only what must change:
the model name, a clamped ``max_output_tokens``, the parameters the backend
denies. Answers are relayed as bytes with the model name swapped back; the
usage (``input_tokens``, ``output_tokens``) is read from the Response object,
on a stream from its last event (``response.completed``, ``.incomplete`` or
``.failed``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from router.errors import BackendRejectedParam, UpstreamError
from router.inbound.responses_stream import TERMINAL, terminal_event
from router.providers.base import (
    RESPONSES_USAGE,
    Call,
    Opened,
    Usage,
    answer_object,
    renamed,
    usage_from,
)
from router.streaming import SSERelay

if TYPE_CHECKING:
    from router.providers.openai import CompatBackend


def responses_usage(raw: Any) -> Usage | None:
    return usage_from(raw, RESPONSES_USAGE)


class ResponsesAdapter:
    __slots__ = ("_backend", "_call", "_relay", "usage")

    def __init__(self, backend: CompatBackend, call: Call) -> None:
        self._backend = backend
        self._call = call
        self._relay: SSERelay | None = None
        self.usage: Usage | None = None

    def _body(self) -> bytes:
        call, be = self._call, self._backend
        blocked = be.blocked_by_api["responses"]
        req = call.request
        if (call.max_tokens is None and call.member_model == req.model
                and blocked.isdisjoint(call.body)):  # fmt: skip
            return call.raw
        body = dict(call.body)
        body["model"] = call.member_model
        if call.max_tokens is not None:
            body["max_output_tokens"] = call.max_tokens
        for name in [k for k in body if k in blocked]:
            if be.unsupported == "reject" and body[name] is not None:
                raise BackendRejectedParam(
                    f"Parameter {name!r} is not supported by backend {be.name!r}.", param=name
                )
            del body[name]
        return orjson.dumps(body)

    async def open(self) -> Opened:
        call, be = self._call, self._backend
        if be.unusable is not None:
            raise UpstreamError(be.unusable)
        assert be.egress is not None
        opened = await be.upstream.post(
            be.endpoint("responses", call.member_model), be.headers, self._body(), be.egress,
            extra=call.forward_headers,
        )  # fmt: skip
        if call.stream and opened.is_stream:
            self._relay = SSERelay(call.member_model, call.client_model, True, be.secrets)
        return opened

    def transform_body(self, body: bytes) -> bytes:
        doc = answer_object(self._backend.name, body)
        self.usage = responses_usage(doc.get("usage")) or Usage(0, 0, reported=False)
        return renamed(body, doc, self._call.client_model)

    def transform_chunk(self, data: bytes) -> bytes:
        assert self._relay is not None
        return self._scan(self._relay.feed(data))

    def _scan(self, out: bytes) -> bytes:
        if out and any(kind in out for kind in TERMINAL):
            for event in out.split(b"\n\n"):
                doc = terminal_event(event)
                if doc is not None and isinstance(doc.get("response"), dict):
                    self.usage = responses_usage(doc["response"].get("usage")) or self.usage
        return out

    def finish_stream(self) -> bytes:
        relay = self._relay
        if relay is None:
            return b""
        out = self._scan(relay.flush())
        if self.usage is None:
            self.usage = self.stream_usage_so_far()
        return out

    def stream_usage_so_far(self) -> Usage | None:
        relay = self._relay
        if relay is None:
            return None
        if self.usage is not None:
            return self.usage
        # no usage yet: about one token per delta event
        return Usage(0, max(0, relay.events - 3), reported=False)
