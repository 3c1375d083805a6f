"""``POST /v1/chat/completions``: OpenAI's chat-completions contract."""

from __future__ import annotations

from router.contract import ChatCompletionRequest
from router.inbound.base import ClientCall, Codec, validate
from router.quota import tokens as tokenest
from router.routing.prefix import opening_key


class ChatCodec(Codec):
    endpoint = "chat"
    api = "chat"
    kind = "chat"
    path = "/v1/chat/completions"

    def prefix_key(self, request: ChatCompletionRequest, limit: int) -> bytes:
        return opening_key(request, limit)

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        req, doc = validate(ChatCompletionRequest, raw, model)
        return ClientCall(
            codec=self, request=req, raw=raw, doc=doc, model=req.model, stream=bool(req.stream),
            max_output=req.output_limit(), outputs=req.n or 1,
            prompt_bound=tokenest.bound(raw), estimate=lambda: tokenest.estimate(req),
            user=req.user, tools=bool(req.tools), wants_usage=req.wants_usage(),
        )  # fmt: skip
