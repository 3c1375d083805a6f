"""The Adapter protocol: one small object per upstream attempt.

A backend serves the client APIs in its ``apis`` (chat, completions,
embeddings, responses); ``adapter(call)`` makes the adapter for ``call.api``. An adapter
turns the client's request into its backend's wire format,
sends it (through :class:`router.upstream.Upstream` or, for the simulated
model, in-process) and turns the answer back into OpenAI's format while
reading usage on the way. Adapters hold per-attempt stream state, so a new one
is made for every attempt.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from multidict import CIMultiDict

from router.config import Backend
from router.contract import ChatCompletionRequest
from router.egress import Egress
from router.errors import UpstreamError
from router.fim import FimTemplate
from router.inbound.contracts import CompletionRequest, EmbeddingRequest
from router.inbound.responses_contract import ResponsesRequest
from router.providers.credentials import Credential
from router.upstream import Upstream, secrets_of

log = logging.getLogger("spillway.upstream")

ClientRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reported: bool = True  # False: counted or estimated by the gateway


CHAT_USAGE = ("prompt_tokens", "completion_tokens", "prompt_tokens_details")
RESPONSES_USAGE = ("input_tokens", "output_tokens", "input_tokens_details")


def usage_from(raw: Any, names: tuple[str, str, str] = CHAT_USAGE) -> Usage | None:
    """An OpenAI usage object -> :class:`Usage` (None when absent or malformed);
    ``names``: its prompt, completion and prompt-details fields (chat's, or
    :data:`RESPONSES_USAGE`)."""
    if not isinstance(raw, dict):
        return None
    prompt_name, completion_name, details_name = names
    try:
        prompt = int(raw.get(prompt_name) or 0)
        completion = int(raw.get(completion_name) or 0)
    except (TypeError, ValueError):
        return None
    details = raw.get(details_name)
    cached = 0
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        cached = details["cached_tokens"]
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def answer_object(backend: str, body: bytes) -> dict[str, Any]:
    """A complete answer's JSON object; an :class:`UpstreamError` when it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"Backend {backend!r} answered with invalid JSON.") from None
    if not isinstance(doc, dict):
        raise UpstreamError(f"Backend {backend!r} answered an unexpected body.")
    return doc


def renamed(body: bytes, doc: dict[str, Any], client_model: str) -> bytes:
    """``body`` (parsed as ``doc``) naming ``client_model`` as its model."""
    if doc.get("model") == client_model:
        return body
    old = b'"model":' + orjson.dumps(doc.get("model"))
    if old in body:
        return body.replace(old, b'"model":' + orjson.dumps(client_model), 1)
    doc["model"] = client_model
    return orjson.dumps(doc)


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
        body: dict[str, Any] | None = None,
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
        self._body = body  # ``raw`` parsed, when the codec parsed it already

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
    egress: Egress | None  # None: not reached over HTTP
    secrets: tuple[str, ...]  # credentials it sends: masked in whatever is passed on

    def adapter(self, call: Call) -> Adapter: ...

    def refresh_credentials(self, now: float, *, force: bool = False) -> bool:
        """Read a file or environment credential again when due; True when it changed."""
        ...

    def probe_headers(self) -> dict[str, str]:
        """Headers for a health probe of this backend (its credential included)."""
        ...


class HTTPBackend:
    """What every backend reached over HTTP shares: its egress (TLS, proxy,
    timeouts), its credential and the constant headers of its calls."""

    provider = ""
    default_url: str | None = None  # where it goes when the config gives no url

    def __init__(self, name: str, cfg: Backend, upstream: Upstream) -> None:
        self.name = name
        self.cfg = cfg
        self.upstream = upstream
        self.egress: Egress | None = Egress.for_backend(name, cfg, cfg.url or self.default_url)
        self.credential = Credential(name, cfg)
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.secrets: tuple[str, ...] = ()
        self.unusable: str | None = None  # why every attempt must fail
        self._build_headers()

    def base_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Accept-Encoding": "identity"}

    def auth_headers(self) -> dict[str, str]:
        key = self.credential.value
        return {"Authorization": f"Bearer {key}"} if key is not None else {}

    def _build_headers(self) -> None:
        headers = self.base_headers()
        headers.update(self.auth_headers())
        headers.update(self.cfg.headers)
        self.headers = CIMultiDict(headers)
        self.secrets = tuple(s for s in secrets_of(headers) if s)
        self.unusable = None
        if self.credential.renewable and self.credential.value is None:
            # the client learns which backend; the operator's log says where it looked
            self.unusable = f"Backend {self.name!r} has no credential to send."
            log.error(
                "backend %s has no credential: %s is missing or empty",
                self.name, self.credential.source,
            )  # fmt: skip

    def refresh_credentials(self, now: float, *, force: bool = False) -> bool:
        if not self.credential.refresh(now, force=force):
            return False
        self._build_headers()
        return True

    def probe_headers(self) -> dict[str, str]:
        headers = dict(self.cfg.headers)
        headers.update(self.auth_headers())
        return headers
