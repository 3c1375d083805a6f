"""``POST /v1/embeddings``: OpenAI's embeddings contract.

Nothing is generated: a request reserves its input bound and no output, and is
settled on the reported ``usage.prompt_tokens``. The bound is exact for
token-id inputs and the UTF-8 length of string inputs (every token covers at
least one byte), plus two special tokens per input.
"""

from __future__ import annotations

from router.inbound.base import ClientCall, Codec, validate
from router.inbound.contracts import EmbeddingRequest
from router.routing.prefix import leading_key

SPECIAL_TOKENS = 2  # BOS/EOS or CLS/SEP an embedding model may add to each input


def bound(req: EmbeddingRequest) -> int:
    texts, ids = req.split()
    size = sum(len(t.encode()) for t in texts) + sum(len(i) for i in ids)
    return size + SPECIAL_TOKENS * (len(texts) + len(ids))


def estimate(req: EmbeddingRequest) -> int:
    texts, ids = req.split()
    return sum(len(t) for t in texts) // 4 + sum(len(i) for i in ids) + 1


class EmbeddingsCodec(Codec):
    endpoint = "embeddings"
    api = "embeddings"
    kind = "embeddings"
    path = "/v1/embeddings"

    def prefix_key(self, request: EmbeddingRequest, limit: int) -> bytes | None:
        return leading_key(request.input, limit)

    def parse(self, raw: bytes, model: str | None = None) -> ClientCall:
        req, doc = validate(EmbeddingRequest, raw, model)
        return ClientCall(
            codec=self, request=req, raw=raw, doc=doc, model=req.model, stream=False, max_output=0,
            outputs=0, prompt_bound=bound(req), estimate=lambda: estimate(req), user=req.user,
        )  # fmt: skip
