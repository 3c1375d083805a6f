"""vLLM's ``POST /tokenize`` (at the server's root, beside ``/v1``): token counts.

For members that declare ``tokenize: true``. The request is the prompt as
chat messages (``messages``, ``tools``, ``add_generation_prompt``), the model
replaced by the member's; the answer (``{"count", "max_model_len", "tokens"}``)
is passed on for the client API's bridge to read. Counting generates nothing:
the usage is zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from yarl import URL

from router.errors import UpstreamError
from router.providers.base import Call, Opened, Usage

if TYPE_CHECKING:
    from router.providers.openai import CompatBackend


def tokenize_url(url: str) -> URL:
    """vLLM's /tokenize for a backend whose ``url`` is its OpenAI base (``.../v1``)."""
    base = url.rstrip("/").removesuffix("/chat/completions").removesuffix("/v1")
    return URL(base + "/tokenize")


class TokenizeAdapter:
    __slots__ = ("_backend", "_call", "usage")

    def __init__(self, backend: CompatBackend, call: Call) -> None:
        self._backend = backend
        self._call = call
        self.usage: Usage | None = None

    async def open(self) -> Opened:
        call, be = self._call, self._backend
        if be.unusable is not None:
            raise UpstreamError(be.unusable)
        body = dict(call.body)
        body["model"] = call.member_model
        assert be.egress is not None and be.cfg.url is not None
        return await be.upstream.post(
            tokenize_url(be.cfg.url), be.headers, orjson.dumps(body), be.egress,
            extra=call.forward_headers,
        )  # fmt: skip

    def transform_body(self, body: bytes) -> bytes:
        self.usage = Usage(0, 0, reported=True)
        return body

    def transform_chunk(self, data: bytes) -> bytes:
        return data

    def finish_stream(self) -> bytes:
        return b""

    def stream_usage_so_far(self) -> Usage | None:
        return self.usage
