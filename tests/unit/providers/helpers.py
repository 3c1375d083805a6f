"""Building a :class:`router.providers.Call` the way the proxy does."""

from __future__ import annotations

from typing import Any

import orjson

from router.contract import ChatCompletionRequest
from router.providers.base import Call


def make_call(
    body: dict[str, Any],
    *,
    member_model: str = "backend-model",
    max_tokens: int | None = None,
    default_max_tokens: int = 1024,
) -> Call:
    raw = orjson.dumps(body)
    request = ChatCompletionRequest.model_validate_json(raw)
    return Call(
        request=request,
        raw=raw,
        client_model=request.model,
        member_model=member_model,
        max_tokens=max_tokens,
        clamped=False,
        default_max_tokens=default_max_tokens,
        request_id="req_unit",
        forward_headers={},
        stream=bool(request.stream),
        wants_usage=request.wants_usage(),
    )
