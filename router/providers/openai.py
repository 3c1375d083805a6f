"""OpenAI-compatible backends: vLLM, SGLang, TGI, llama.cpp, OpenAI, poolside.

Pass-through: the client's JSON is forwarded with only what must change
(the model name, ``stream_options.include_usage`` on streams, a clamped output
cap, and for hosted flavours the vLLM-only extras dropped). Answers are relayed
as bytes; only the usage is parsed.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.config import Backend
from router.contract import VLLM_EXTRAS
from router.errors import BackendRejectedParam, UpstreamError
from router.providers.base import Call, Opened, Usage
from router.streaming import SSERelay
from router.upstream import Limits, Upstream


class OpenAIBackend:
    """One configured OpenAI-compatible server or account."""

    provider = "openai"

    def __init__(self, name: str, cfg: Backend, upstream: Upstream) -> None:
        self.name = name
        self.cfg = cfg
        self.upstream = upstream
        self.limits = Limits.from_config(cfg.timeouts)
        assert cfg.url is not None
        base = cfg.url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        self.headers.update(cfg.headers)
        if cfg.api_key is not None:
            self.headers["Authorization"] = f"Bearer {cfg.api_key.get_secret_value()}"

    def adapter(self, call: Call) -> OpenAIAdapter:
        return OpenAIAdapter(self, call)


def patch_body(call: Call, flavour: str, unsupported: str, backend: str) -> dict[str, Any]:
    """The client's JSON object with the gateway's changes applied (a copy)."""
    body = dict(call.body)
    body["model"] = call.member_model
    if call.stream:
        opts = body.get("stream_options")
        opts = dict(opts) if isinstance(opts, dict) else {}
        opts["include_usage"] = True
        body["stream_options"] = opts
    if call.max_tokens is not None:
        if "max_completion_tokens" in body:
            body["max_completion_tokens"] = call.max_tokens
        if "max_tokens" in body or "max_completion_tokens" not in body:
            body["max_tokens"] = call.max_tokens
    if flavour == "openai":
        extras = [k for k in body if k in VLLM_EXTRAS]
        if extras and unsupported == "reject":
            raise BackendRejectedParam(
                f"Parameter {extras[0]!r} is not supported by backend {backend!r}.",
                param=extras[0],
            )
        for k in extras:
            del body[k]
    return body


class OpenAIAdapter:
    __slots__ = ("_backend", "_call", "_relay", "usage")

    def __init__(self, backend: OpenAIBackend, call: Call) -> None:
        self._backend = backend
        self._call = call
        self._relay: SSERelay | None = None
        self.usage: Usage | None = None

    def _needs_patch(self) -> bool:
        call = self._call
        return (
            call.stream
            or call.max_tokens is not None
            or call.member_model != call.request.model
            or self._backend.cfg.flavour != "vllm"
        )

    async def open(self) -> Opened:
        call, be = self._call, self._backend
        if self._needs_patch():
            body = orjson.dumps(patch_body(call, be.cfg.flavour, be.cfg.unsupported_params, be.name))
        else:
            body = call.raw
        headers = be.headers
        if call.forward_headers:
            headers = {**headers, **call.forward_headers}
        opened = await be.upstream.post(be.url, headers, body, be.limits, backend=be.name)
        if call.stream and opened.is_stream:
            self._relay = SSERelay(call.member_model, call.client_model, call.wants_usage)
        return opened

    # -- non-streamed -------------------------------------------------------------
    def transform_body(self, body: bytes) -> bytes:
        call = self._call
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"Backend {self._backend.name!r} answered with invalid JSON."
            ) from None
        if not isinstance(doc, dict):
            raise UpstreamError(f"Backend {self._backend.name!r} answered an unexpected body.")
        self.usage = usage_from(doc.get("usage")) or _estimate_usage(doc)
        if doc.get("model") == call.client_model:
            return body
        old = b'"model":' + orjson.dumps(doc.get("model"))
        if old in body:
            return body.replace(old, b'"model":' + orjson.dumps(call.client_model), 1)
        doc["model"] = call.client_model
        return orjson.dumps(doc)

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


def usage_from(raw: Any) -> Usage | None:
    """OpenAI's usage object -> :class:`Usage` (None when absent or malformed)."""
    if not isinstance(raw, dict):
        return None
    try:
        prompt = int(raw.get("prompt_tokens") or 0)
        completion = int(raw.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return None
    details = raw.get("prompt_tokens_details")
    cached = 0
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        cached = details["cached_tokens"]
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def _estimate_usage(doc: dict[str, Any]) -> Usage:
    """No usage in the answer: about four characters per generated token."""
    chars = 0
    for choice in doc.get("choices") or ():
        msg = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(msg, dict):
            chars += len(str(msg.get("content") or ""))
            chars += len(orjson.dumps(msg.get("tool_calls") or []))
    return Usage(prompt_tokens=0, completion_tokens=(chars + 3) // 4, reported=False)
