"""OpenAI-compatible backends: vLLM, SGLang, TGI, llama.cpp, OpenAI, poolside.

Pass-through for chat completions (``{url}/chat/completions``), completions
(``{url}/completions``) and embeddings (``{url}/embeddings``, see
:mod:`router.providers.embeddings`): the client's JSON is forwarded with only
what must change (the model name, ``stream_options.include_usage`` on streams,
a clamped output cap, the parameter policy, and for a completion with
``suffix`` on a member with a FIM template, the infilling prompt). Answers are
relayed as bytes; only the usage is parsed. :mod:`router.providers.azure`
shares all of it through :class:`CompatBackend`.

Parameter policy: a backend's ``flavour`` is ``vllm`` (self-hosted: every vLLM
extra forwarded) or ``openai`` (hosted APIs that refuse unknown fields: vLLM
extras of each endpoint such as top_k, min_p, include_stop_str_in_output,
skip_special_tokens, return_tokens_as_token_ids are not sent, except those in
``allow_params``);
``deny_params`` adds parameters a provider refuses. ``unsupported_params``
says what happens to a refused parameter the client sent: ``drop`` it, or
``reject`` the request with a 400 naming the parameter and the backend.
"""

from __future__ import annotations

from typing import Any

import orjson
from yarl import URL

from router.config import Backend
from router.contract import VLLM_EXTRAS
from router.errors import UpstreamError, status_error
from router.inbound.contracts import (
    VLLM_COMPLETION_EXTRAS,
    VLLM_EMBEDDING_EXTRAS,
    CompletionRequest,
)
from router.providers.base import (
    Adapter,
    Call,
    HTTPBackend,
    Opened,
    Usage,
    answer_object,
    renamed,
    usage_from,
)
from router.providers.embeddings import EmbeddingsAdapter
from router.providers.params import patch_body
from router.providers.responses import ResponsesAdapter
from router.providers.tokenize import TokenizeAdapter
from router.serving import backend_apis
from router.streaming import SSERelay
from router.upstream import Upstream


class CompatBackend(HTTPBackend):
    """What every OpenAI-compatible backend shares: egress, headers, the
    parameter policy. Subclasses say where a member's requests go."""

    provider = "openai"
    default_flavour = "vllm"

    def __init__(self, name: str, cfg: Backend, upstream: Upstream) -> None:
        super().__init__(name, cfg, upstream)
        self.flavour = cfg.flavour if "flavour" in cfg.model_fields_set else self.default_flavour
        self.unsupported = cfg.unsupported_params
        self.apis = backend_apis(self.provider, self.flavour)
        # the parameters this backend does not take, per API: the vLLM extras for the
        # openai flavour (less those allowed), and whatever the config denies
        allowed, denied = frozenset(cfg.allow_params), frozenset(cfg.deny_params)
        self.blocked_by_api: dict[str, frozenset[str]] = {
            api: ((extras if self.flavour == "openai" else frozenset()) - allowed) | denied
            for api, extras in (("chat", VLLM_EXTRAS), ("completions", VLLM_COMPLETION_EXTRAS),
                                ("embeddings", VLLM_EMBEDDING_EXTRAS))
        }  # fmt: skip
        self.blocked_by_api["responses"] = denied
        self.blocked = self.blocked_by_api["chat"]
        # the name of an output cap the gateway fills in: OpenAI's chat API (its reasoning
        # models) takes only max_completion_tokens; vLLM and the completions API max_tokens
        chat_cap = "max_tokens"
        if self.flavour == "openai" and "max_completion_tokens" not in self.blocked:
            chat_cap = "max_completion_tokens"
        self.cap_param = {"chat": chat_cap, "completions": "max_tokens", "embeddings": "max_tokens"}

    def endpoint(self, api: str, member_model: str) -> URL:
        raise NotImplementedError

    def adapter(self, call: Call) -> Adapter:
        if call.api == "embeddings":
            return EmbeddingsAdapter(self, call)
        if call.api == "tokenize":
            return TokenizeAdapter(self, call)
        if call.api == "responses":
            return ResponsesAdapter(self, call)
        return OpenAIAdapter(self, call)


PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings",
         "responses": "/responses"}  # fmt: skip


class OpenAIBackend(CompatBackend):
    """One configured OpenAI-compatible server or account."""

    def __init__(self, name: str, cfg: Backend, upstream: Upstream) -> None:
        super().__init__(name, cfg, upstream)
        assert cfg.url is not None
        base = cfg.url.rstrip("/").removesuffix("/chat/completions")
        self.urls = {api: URL(base + path) for api, path in PATHS.items()}

    def endpoint(self, api: str, member_model: str) -> URL:
        return self.urls[api]


class OpenAIAdapter:
    """Chat completions and completions: the same pass-through and SSE relay."""

    __slots__ = ("_backend", "_blocked", "_call", "_relay", "usage")

    def __init__(self, backend: CompatBackend, call: Call) -> None:
        self._backend = backend
        self._call = call
        self._blocked = backend.blocked_by_api[call.api]
        self._relay: SSERelay | None = None
        self.usage: Usage | None = None

    def _needs_patch(self) -> bool:
        call = self._call
        req = call.request
        return (
            call.stream
            or call.max_tokens is not None
            or call.member_model != req.model
            or not self._blocked.isdisjoint(req.model_fields_set)
            or (call.fim is not None and isinstance(req, CompletionRequest)
                and req.suffix is not None)
        )  # fmt: skip

    async def open(self) -> Opened:
        call, be = self._call, self._backend
        if be.unusable is not None:
            raise UpstreamError(be.unusable)
        if self._needs_patch():
            body = orjson.dumps(patch_body(
                call, be.name, self._blocked, be.unsupported, be.cap_param[call.api]
            ))  # fmt: skip
        else:
            body = call.raw
        assert be.egress is not None
        opened = await be.upstream.post(
            be.endpoint(call.api, call.member_model), be.headers, body, be.egress,
            extra=call.forward_headers,
        )  # fmt: skip
        if call.stream and opened.is_stream:
            self._relay = SSERelay(
                call.member_model, call.client_model, call.wants_usage, be.secrets
            )
        return opened

    # -- non-streamed -------------------------------------------------------------
    def transform_body(self, body: bytes) -> bytes:
        doc = answer_object(self._backend.name, body)
        if doc.get("error") and "choices" not in doc:  # an error answered as a 200
            raise status_error(502, body, backend=f"backend {self._backend.name!r}")
        self.usage = usage_from(doc.get("usage")) or _estimate_usage(doc)
        return renamed(body, doc, self._call.client_model)

    # -- streamed -----------------------------------------------------------------
    def transform_chunk(self, data: bytes) -> bytes:
        assert self._relay is not None
        return self._relay.feed(data)

    def finish_stream(self) -> bytes:
        relay = self._relay
        if relay is None:
            return b""
        out = relay.flush()
        self.usage = usage_from(relay.usage) or Usage(
            prompt_tokens=0, completion_tokens=max(0, relay.events - 1), reported=False
        )
        return out

    def stream_usage_so_far(self) -> Usage | None:
        """Usage of a stream that ended early (client gone, upstream broke)."""
        relay = self._relay
        if relay is None:
            return None
        return usage_from(relay.usage) or Usage(
            prompt_tokens=0, completion_tokens=max(0, relay.events - 1), reported=False
        )


def _estimate_usage(doc: dict[str, Any]) -> Usage:
    """No usage in the answer: about four characters per generated token."""
    chars = 0
    for choice in doc.get("choices") or ():
        msg = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(choice, dict) and isinstance(choice.get("text"), str):
            chars += len(choice["text"])  # a completion
        if isinstance(msg, dict):
            chars += len(str(msg.get("content") or ""))
            chars += len(orjson.dumps(msg.get("tool_calls") or []))
    return Usage(prompt_tokens=0, completion_tokens=(chars + 3) // 4, reported=False)
