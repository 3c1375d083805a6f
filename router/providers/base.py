"""The Adapter protocol: one small object per upstream attempt.

A backend serves the client APIs in its ``apis`` (chat, completions,
embeddings); ``adapter(call)`` makes the adapter for ``call.api``. An adapter
turns the client's request into its backend's wire format,
sends it (through :class:`router.upstream.Upstream` or, for the simulated
model, in-process) and turns the answer back into OpenAI's format while
reading usage on the way. Adapters hold per-attempt stream state, so a new one
is made for every attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from router.config import Backend
from router.contract import ChatCompletionRequest
from router.fim import FimTemplate
from router.inbound.contracts import CompletionRequest, EmbeddingRequest

ClientRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reported: bool = True  # False: counted or estimated by the gateway


class Call:
    """What one attempt must send: the request and the gateway's decisions."""

    __slots__ = (
        "_body", "api", "clamped", "client_model", "default_max_tokens", "fim",
        "forward_headers", "max_tokens", "member_model", "raw", "request", "request_id",
        "stream", "wants_usage",
    )  # fmt: skip

    def __init__(
        self,
        *,
        request: ClientRequest,
        raw: bytes,
        client_model: str,
        member_model: str,
        max_tokens: int | None,
        clamped: bool,
        default_max_tokens: int,
        request_id: str,
        forward_headers: dict[str, str],
        api: str = "chat",
        stream: bool = False,
        wants_usage: bool = False,
        fim: FimTemplate | None = None,
    ) -> None:
        self.api = api  # the client API of ``request``
        self.request = request
        self.raw = raw  # the client's body, exactly as received
        self.client_model = client_model  # the name the client asked for
        self.member_model = member_model  # the model name at the backend
        self.max_tokens = max_tokens  # output cap to send (clamped), None: as asked
        self.clamped = clamped
        self.default_max_tokens = default_max_tokens  # the pool's max_output_tokens
        self.request_id = request_id
        self.forward_headers = forward_headers
        self.stream = stream
        self.wants_usage = wants_usage  # the client asked for the usage chunk
        self.fim = fim  # the member's infilling template (None: none, or the backend's own)
        self._body: dict[str, Any] | None = None

    @property
    def body(self) -> dict[str, Any]:
        """The client's JSON object (parsed on first use; do not mutate)."""
        if self._body is None:
            self._body = orjson.loads(self.raw)
        return self._body

    @property
    def chat(self) -> ChatCompletionRequest:
        """The request, for adapters that serve only chat completions."""
        assert isinstance(self.request, ChatCompletionRequest), self.api
        return self.request


class Opened(Protocol):
    """An upstream answer whose status was 2xx; the body is still to be read."""

    @property
    def is_stream(self) -> bool: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Adapter(Protocol):
    """Per-attempt translator. ``open`` raises :class:`router.errors.UpstreamError`
    (retryable or not) for anything but a 2xx answer."""

    usage: Usage | None

    async def open(self) -> Opened: ...

    def transform_body(self, body: bytes) -> bytes:
        """A complete non-streamed answer -> OpenAI JSON bytes; sets ``usage``."""
        ...

    def transform_chunk(self, data: bytes) -> bytes:
        """Streamed bytes as received -> OpenAI SSE bytes ready to relay."""
        ...

    def finish_stream(self) -> bytes:
        """Bytes still held back when the upstream stream ended; sets ``usage``."""
        ...

    def stream_usage_so_far(self) -> Usage | None:
        """What a stream that ended early (client gone, upstream broke) produced."""
        ...


class ProviderBackend(Protocol):
    """One configured backend, built once per config; makes an adapter per attempt."""

    name: str
    cfg: Backend
    apis: frozenset[str]  # the client APIs it serves

    def adapter(self, call: Call) -> Adapter: ...
