"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API.

Backends that speak it (provider ``anthropic``) get the body natively, with
the client's ``anthropic-version`` and ``anthropic-beta`` headers; the rest
get it through the bridge to chat completions
(:mod:`router.inbound.messages_bridge`). A call reserves ``max_tokens`` of
output and a prompt bound from the body (its bytes, each image counted as
:data:`router.quota.tokens.IMAGE_TOKENS` instead of its data).

``count_tokens`` is counted natively by Anthropic backends, by vLLM's
``/tokenize`` on members that declare ``tokenize: true``, else by the gateway's
estimate (about four characters per token), in that order of the route's
pools. It generates nothing: no tokens are reserved or charged.

Errors leave in Anthropic's envelope, ``{"type": "error", "error": {"type",
"message"}}``, with the type of their status (a gateway without capacity, 503,
is Anthropic's 529 ``overloaded_error``); after a stream started, as its
``error`` event.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from router.contract import ChatCompletionRequest
from router.errors import InvalidRequest, SpillwayError, UpstreamError
from router.inbound.base import ClientCall, Codec, validate
from router.inbound.messages_bridge import MessagesToChat, prompt_of
from router.inbound.messages_contract import (
    Base64Source,
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from router.quota.tokens import IMAGE_TOKENS, TEMPLATE_TOKENS
from router.routing.prefix import leading_key

# status -> Anthropic's error type
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip
FORWARDED = ("anthropic-version", "anthropic-beta")


def error_envelope(exc: SpillwayError) -> tuple[int, dict[str, Any]]:
    """(status, Anthropic's error body) of ``exc``."""
    status = 529 if exc.status == 503 else exc.status
    etype = ERROR_TYPES.get(status)
    if etype is None:
        etype = "api_error" if status >= 500 else "invalid_request_error"
    return status, {"type": "error", "error": {"type": etype, "message": exc.message}}


def _images(req: CountTokensRequest) -> tuple[int, int]:
    """(images, bytes of their base64 data) anywhere in the turns."""
    count = size = 0
    for turn in req.messages:
        if isinstance(turn.content, str):
            continue
        for block in turn.content:
            parts: list[Any] = [block]
            if isinstance(block, ToolResultBlock) and isinstance(block.content, list):
                parts = list(block.content)
            for part in parts:
                if isinstance(part, ImageBlock):
                    count += 1
                    if isinstance(part.source, Base64Source):
                        size += len(part.source.data)
    return count, size


def bound(req: CountTokensRequest, raw: bytes) -> int:
    """Upper bound of the prompt tokens (see :mod:`router.quota.tokens`)."""
    images, data = _images(req)
    return len(raw) - data + images * IMAGE_TOKENS + TEMPLATE_TOKENS


def estimate(req: CountTokensRequest) -> int:
    """A typical prompt-token count: about four characters per token."""
    chars = 0
    if isinstance(req.system, str):
        chars += len(req.system)
    elif req.system:
        chars += sum(len(b.text) for b in req.system)
    for turn in req.messages:
        chars += 16
        if isinstance(turn.content, str):
            chars += len(turn.content)
            continue
        for block in turn.content:
            if isinstance(block, TextBlock):
                chars += len(block.text)
            elif isinstance(block, ToolUseBlock):
                chars += len(block.name) + len(orjson.dumps(block.input))
            elif isinstance(block, ToolResultBlock):
                content = block.content
                if isinstance(content, str):
                    chars += len(content)
                elif content:
                    chars += sum(len(p.text) for p in content if isinstance(p, TextBlock))
            elif not isinstance(block, ImageBlock):
                chars += len(block.model_dump_json())
    for tool in req.tools or ():
        chars += len(tool.model_dump_json(exclude_none=True))
    return chars // 4 + _images(req)[0] * 1024 + 1


def opening(req: CountTokensRequest, limit: int) -> bytes | None:
    """The digest of the system prompt and the first turn's text (prefix_affinity)."""
    texts: list[str] = []
    if isinstance(req.system, str):
        texts.append(req.system)
    elif req.system:
        texts.extend(b.text for b in req.system)
    if req.messages:
        content = req.messages[0].content
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(b.text for b in content if isinstance(b, TextBlock))
    return leading_key("\n".join(texts), limit)


class AnthropicErrors(Codec):
    """Errors in Anthropic's envelope and event stream."""

    kind = "chat"
    forward = FORWARDED

    def error_response(self, exc: SpillwayError) -> web.Response:
        status, doc = error_envelope(exc)
        return web.Response(
            body=orjson.dumps(doc), status=status, headers=exc.headers,
            content_type="application/json",
        )  # fmt: skip

    def stream_error(self, exc: SpillwayError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(error_envelope(exc)[1]) + b"\n\n"

    def unserved(self, model: str, call: ClientCall) -> SpillwayError:
        return InvalidRequest(
            f"Model `{model}` has no backend that serves {self.path}.", param="model",
            code="unsupported_endpoint",
        )  # fmt: skip


class MessagesCodec(AnthropicErrors):
    endpoint = "messages"
    api = "messages"
    path = "/v1/messages"
    bridges = {"chat": MessagesToChat()}

    def prefix_key(self, request: MessagesRequest, limit: int) -> bytes | None:
        return opening(request, limit)

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        req, doc = validate(MessagesRequest, raw, model)
        user = (req.metadata or {}).get("user_id")
        return ClientCall(
            codec=self, request=req, raw=raw, doc=doc, model=req.model, stream=bool(req.stream),
            max_output=req.max_tokens, outputs=1, prompt_bound=bound(req, raw),
            estimate=lambda: estimate(req), user=user if isinstance(user, str) else None,
            tools=bool(req.tools),
        )  # fmt: skip


class CountToTokenize:
    """count_tokens -> vLLM's ``POST /tokenize`` with the prompt as chat messages."""

    def request(self, call: ClientCall) -> tuple[Any, bytes]:
        body = prompt_of(call.request)
        body["add_generation_prompt"] = True
        raw = orjson.dumps(body)
        return validate(ChatCompletionRequest, raw, None)[0], raw

    def answers(self, call: ClientCall) -> TokenizeAnswers:
        return TokenizeAnswers()


class TokenizeAnswers:
    """vLLM's ``{"count": N, ...}`` -> ``{"input_tokens": N}``."""

    def body(self, data: bytes) -> bytes:
        try:
            count = orjson.loads(data)["count"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            count = None
        if not isinstance(count, int):
            raise UpstreamError("The backend's /tokenize answer has no count.")
        return orjson.dumps({"input_tokens": count})

    def chunk(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class CountTokensCodec(AnthropicErrors):
    endpoint = "count_tokens"
    api = "count_tokens"
    path = "/v1/messages/count_tokens"
    bridges = {"tokenize": CountToTokenize()}

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        req, doc = validate(CountTokensRequest, raw, model)
        return ClientCall(
            codec=self, request=req, raw=raw, doc=doc, model=req.model, stream=False, max_output=0,
            outputs=0, prompt_bound=0, estimate=lambda: estimate(req), tools=bool(req.tools),
        )  # fmt: skip

    def answer_locally(self, call: ClientCall) -> bytes | None:
        """No pool of the route can count: the gateway's estimate."""
        return orjson.dumps({"input_tokens": call.estimate()})
